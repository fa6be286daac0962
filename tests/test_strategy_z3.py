"""`z3`: the model writes a z3 program, the sandbox runs it (for real, in a confined child), the
model answers from what it printed; a failed program is fixed, then the model answers alone."""

from __future__ import annotations

import asyncio
import json

import pytest

from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.sandbox import code as sandbox
from ponder.sandbox.code import NO_OUTPUT
from ponder.sandbox.landlock import landlock_abi
from ponder.strategies.z3 import (
    ANSWER_PROMPT,
    COPIED_SHAPE,
    FIX_PROMPT,
    NO_SOLUTION_REPORT,
    PLACEHOLDERS,
    PROGRAM_PROMPT,
)
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.tokens import count_tokens
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_data,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

pytestmark = pytest.mark.skipif(
    landlock_abi() < 1 or sandbox.z3_location() is None,
    reason="z3 runs only with z3-solver installed and Landlock in the kernel",
)

Z3 = f"z3-{MODEL}"
ON = Settings(enable_code_execution=True, code_timeout_s=10, code_memory_mb=256)
QUESTION = "Ann is 4 years older than Bob, and together they are 30. How old is Ann?"
CONVERSATION = conversation("Be brief.", "I have a puzzle.", "Go ahead.", QUESTION)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
PROGRAM = (
    "from z3 import *\n"
    "ann, bob = Ints('ann bob')\n"
    "s = Solver()\n"
    "s.add(ann == bob + 4, ann + bob == 30)\n"
    "print(s.check())\n"
    "print('ann =', s.model()[ann])"
)
OUTPUT = "sat\nann = 17"
BROKEN = "from z3 import *\nann = Int('ann')\nprint(ann + undefined)"
BROKEN_REPORT = "Error: NameError: name 'undefined' is not defined"
ANSWER = "Ann is 17."


def fence(code: str) -> str:
    return f"Here is the program:\n```python\n{code}\n```\nIt prints Ann's age."


def is_program(call: Call) -> bool:
    return PROGRAM_PROMPT in call.prompt or call.prompt.startswith("The program did not work")


class Model:
    """A scripted model for z3: `programs` in turn for the program calls, `ANSWER` for the
    answer; `fail` makes the named kind of call fail."""

    def __init__(self, programs: list[str] | None = None, fail: str | None = None) -> None:
        self.programs = [fence(PROGRAM)] if programs is None else list(programs)
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        kind = "program" if is_program(call) else "answer"
        if kind == self.fail:
            return BackendUnavailable("down")
        reply = self.programs.pop(0) if kind == "program" else ANSWER
        self.replies.append(reply)
        return reply


def content(body: dict[str, object]) -> object:
    choices = body["choices"]
    assert isinstance(choices, list)
    return choices[0]["message"]["content"]


def answering_prompt(code: str, output: str) -> str:
    return (
        f"{QUESTION}\n\nA z3 program written for my request:\n\n```python\n{code}\n```\n\n"
        f"Running it printed:\n\n```\n{output}\n```\n\n{ANSWER_PROMPT}"
    )


async def test_the_program_runs_and_the_model_answers_from_its_output() -> None:
    model = Model()
    backend = scripted(model)
    response = await chat(
        backend,
        Z3,
        settings=ON,
        messages=CONVERSATION,
        max_tokens=60,
        temperature=0.5,
        stop=["END"],
        seed=3,
        ponder={"trace": True},
    )
    assert response.status_code == 200
    body = response.json()
    assert content(body) == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "2"
    program_call, answer_call = backend.calls
    assert [(m.role, m.text) for m in program_call.messages] == [
        *CLIENT[:-1],
        ("user", f"{QUESTION}\n\n{PROGRAM_PROMPT}"),
    ]
    s = program_call.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 1024, (), 3)
    assert [(m.role, m.text) for m in answer_call.messages] == [
        *CLIENT[:-1],
        ("user", answering_prompt(PROGRAM, OUTPUT)),
    ]
    s = answer_call.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.5, 60, ("END",), 3)
    assert body["usage"] == usage_for(backend, model.replies)
    (step,) = trace_steps(body, "program")
    assert (step["attempt"], step["code"], step["output"], step["ok"]) == (1, PROGRAM, OUTPUT, True)


async def test_a_failed_program_goes_back_with_the_report_and_the_fix_is_used() -> None:
    model = Model(programs=[fence(BROKEN), fence(PROGRAM)])
    backend = scripted(model)
    response = await chat(backend, Z3, settings=ON, messages=CONVERSATION, ponder={"trace": True})
    assert content(response.json()) == ANSWER
    assert len(backend.calls) == 3
    first, fix, answer = backend.calls
    report = trace_steps(response.json(), "program")[0]["output"]
    assert report.startswith(BROKEN_REPORT + "\n[stderr]\nTraceback")
    assert [(m.role, m.text) for m in fix.messages] == [
        *[(m.role, m.text) for m in first.messages],
        ("assistant", fence(BROKEN)),
        ("user", FIX_PROMPT.format(report=report)),
    ]
    assert answer.prompt == answering_prompt(PROGRAM, OUTPUT)
    assert response.json()["usage"] == usage_for(backend, model.replies)


@pytest.mark.parametrize(
    ("programs", "reports"),
    [
        ([fence(BROKEN), fence(BROKEN)], [BROKEN_REPORT, BROKEN_REPORT]),
        (["x = 1", "I cannot write it."], [NO_OUTPUT, "Error: SyntaxError"]),
    ],
)
async def test_when_no_program_runs_the_model_answers_the_conversation_alone(
    programs: list[str], reports: list[str]
) -> None:
    model = Model(programs=programs)
    backend = scripted(model)
    response = await chat(backend, Z3, settings=ON, messages=CONVERSATION, ponder={"trace": True})
    body = response.json()
    assert content(body) == ANSWER
    assert len(backend.calls) == 3
    assert [(m.role, m.text) for m in backend.calls[2].messages] == CLIENT
    steps = trace_steps(body, "program")
    assert [s["ok"] for s in steps] == [False, False]
    for step, report in zip(steps, reports, strict=True):
        assert step["output"].startswith(report)
    assert trace_steps(body, "fallback")


async def test_constraints_with_no_solution_go_back_to_be_fixed() -> None:
    unsat = (
        "from z3 import *\nann = Int('ann')\ns = Solver()\ns.add(ann > 5, ann < 3)\n"
        "if s.check() == sat:\n    print(s.model())\nelse:\n    print('no solution')"
    )
    model = Model(programs=[fence(unsat), fence(PROGRAM)])
    backend = scripted(model)
    response = await chat(backend, Z3, settings=ON, ponder={"trace": True})
    assert content(response.json()) == ANSWER
    first, _ = trace_steps(response.json(), "program")
    assert (first["output"], first["ok"]) == (NO_SOLUTION_REPORT, False)
    assert backend.calls[1].prompt == FIX_PROMPT.format(report=NO_SOLUTION_REPORT)


async def test_a_program_that_copies_the_shape_goes_back_without_running() -> None:
    copied = "from z3 import *\n<name> = Real('<name>')\ns = Solver()\ns.add(<constraint>)"
    model = Model(programs=[fence(copied), fence(PROGRAM)])
    backend = scripted(model)
    response = await chat(backend, Z3, settings=ON, ponder={"trace": True})
    assert content(response.json()) == ANSWER
    first, second = trace_steps(response.json(), "program")
    assert (first["output"], first["ok"], second["ok"]) == (COPIED_SHAPE, False, True)
    assert backend.calls[1].prompt == FIX_PROMPT.format(report=COPIED_SHAPE)
    assert all(part in PROGRAM_PROMPT for part in PLACEHOLDERS)


async def test_fix_attempts_zero_falls_back_after_one_program() -> None:
    backend = scripted(Model(programs=[fence(BROKEN)]))
    response = await chat(backend, Z3, settings=ON, ponder={"z3": {"fix_attempts": 0}})
    assert content(response.json()) == ANSWER
    assert len(backend.calls) == 2


async def test_the_model_code_is_confined() -> None:
    escape = "open('/tmp/ponder-z3-strategy-escape', 'w').write('x')\nprint('wrote')"
    backend = scripted(Model(programs=[fence(escape), fence(PROGRAM)]))
    response = await chat(backend, Z3, settings=ON, ponder={"trace": True})
    (first, second) = trace_steps(response.json(), "program")
    assert first["output"].startswith(
        "Error: PermissionError: sandbox: writing to /tmp/ponder-z3-strategy-escape"
    )
    assert second["ok"]


async def test_a_request_on_a_default_server_is_a_403_before_any_call() -> None:
    backend = scripted(Model())
    response = await chat(backend, Z3)
    assert_error(response, 403, type="permission_error", param="model")
    assert "PONDER_ENABLE_CODE_EXECUTION" in response.json()["error"]["message"]
    assert backend.calls == []


async def test_a_server_without_z3_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "z3_location", lambda: None)
    backend = scripted(Model())
    response = await chat(backend, Z3, settings=ON)
    assert_error(response, 400, param="model")
    assert "z3-solver" in response.json()["error"]["message"]
    assert backend.calls == []


async def test_streams_the_program_and_its_output_then_the_answer() -> None:
    backend = scripted(Model())
    response = await chat(backend, Z3, settings=ON, stream=True)
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        f"Program 1:\n```python\n{PROGRAM}\n```\nOutput:\n{OUTPUT}\n"
    )
    assert streamed_text(response.text) == ANSWER


@pytest.mark.parametrize("failing", ["program", "answer"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    response = await chat(scripted(Model(fail=failing)), Z3, settings=ON)
    assert_error(response, 503, type="api_error", code="backend_unavailable")


async def test_a_failed_answer_in_a_stream_ends_it_with_the_error() -> None:
    response = await chat(scripted(Model(fail="answer")), Z3, settings=ON, stream=True)
    assert response.status_code == 200
    assert stream_error(response.text)["code"] == "backend_unavailable"
    deltas = [
        choice["delta"]
        for data in sse_data(response.text)[:-1]
        for choice in json.loads(data)["choices"]
    ]
    assert "Program 1:" in "".join(d.get("reasoning_content") or "" for d in deltas)
    assert not any(d.get("content") for d in deltas)


async def test_a_budget_below_the_calls_needed_is_a_400() -> None:
    backend = scripted(Model())
    response = await chat(backend, Z3, settings=ON, ponder={"max_backend_calls": 1})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == 1


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Model())
    response = await chat(backend, MODEL, settings=ON, optillm_approach="z3")
    assert content(response.json()) == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "2"


async def test_request_n_writes_independent_programs_at_once() -> None:
    model = Model(programs=[fence(PROGRAM), fence(PROGRAM)])
    backend: ScriptedBackend = scripted(model)
    backend.hold()
    request = asyncio.create_task(chat(backend, Z3, settings=ON, n=2))
    await backend.wait_for_in_flight(2)
    assert [is_program(c) for c in backend.calls] == [True, True]
    backend.release()
    response = await request
    assert [c["message"]["content"] for c in response.json()["choices"]] == [ANSWER, ANSWER]
    assert len(backend.calls) == 4
    # each choice is its own answer call's ANSWER: only the programs are reasoning
    chosen = [ANSWER, ANSWER]
    expected = usage_for(backend, model.replies, answer="")  # all replies, less the choices:
    expected["completion_tokens_details"]["reasoning_tokens"] -= sum(map(count_tokens, chosen))
    assert response.json()["usage"] == expected
