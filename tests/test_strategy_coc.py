"""`coc`: the model writes a program, the sandbox runs it (for real, in the `python` tool), a
failure is fixed or its run simulated, and the answer is written from the result."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.sandbox.code import NO_OUTPUT
from ponder.strategies.coc import (
    ANSWER_PROMPT,
    CODE_INTRO,
    CODE_PROMPT,
    FIX_PROMPT,
    OUTPUT_INTRO,
    RUN_INTRO,
    SIMULATE_PROMPT,
    SIMULATION_INTRO,
    extract_code,
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

COC = f"coc-{MODEL}"
CODE_ON = Settings(enable_code_execution=True, code_timeout_s=5, code_memory_mb=128)

GOOD_CODE = (
    "# pencils in the boxes\n"
    "boxes = 6\n"
    "per_box = 4\n"
    "total = boxes * per_box\n"
    "# pencils given away\n"
    "left = total - 5\n"
    "print(left)"
)
GOOD = f"I will count step by step.\n\n```python\n{GOOD_CODE}\n```\n\nIt prints what is left."
BROKEN_CODE = (
    "# which words name a fruit: a judgement for a language model\n"
    "words = ['apple', 'chair', 'pear', 'plum']\n"
    "print(sum(1 for w in words if is_fruit(w)))"
)
BROKEN = f"```python\n{BROKEN_CODE}\n```"
STILL_BROKEN_CODE = (
    "fruit = {'apple': True, 'chair': False, 'pear': True}  # is_fruit, judged\n"
    "words = ['apple', 'chair', 'pear', 'plum']\n"
    "print(sum(1 for w in words if fruit[w]))"
)
STILL_BROKEN = f"Fixed:\n```py\n{STILL_BROKEN_CODE}\n```"
FIXED_CODE = (
    "fruit = {'apple': True, 'chair': False, 'pear': True, 'plum': True}  # is_fruit, judged\n"
    "print(sum(1 for w in ['apple', 'chair', 'pear', 'plum'] if fruit[w]))"
)
FIXED = f"```python\n{FIXED_CODE}\n```"
SIMULATION = (
    "words = ['apple', 'chair', 'pear', 'plum']\n"
    "fruit['plum'] is missing: plum is a fruit, so True\n"
    "sum -> 3\n"
    "Output: 3"
)
ANSWER = "There are 19 pencils left."
FRUIT_ANSWER = "Three of the words name a fruit."

CONVERSATION = conversation(
    "Show your working, then the answer.",
    "I have a maths question.",
    "Go ahead.",
    "6 boxes hold 4 pencils each. I give away 5. How many are left?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
FRUITS = conversation("Be brief.", "How many of these name a fruit: apple, chair, pear, plum?")
FRUIT_CLIENT = [(m["role"], m["content"]) for m in FRUITS]

KINDS = {CODE_PROMPT: "code", FIX_PROMPT: "fix", SIMULATE_PROMPT: "simulation"}


def kind(call: Call) -> str:
    return next((k for end, k in KINDS.items() if call.prompt.endswith(end)), "answer")


def kinds(backend: ScriptedBackend) -> list[str]:
    return [kind(c) for c in backend.calls]


class Coder:
    """A scripted model for coc: `programs` in turn for the program and fix calls, then the
    simulation and the answer (one per choice); `fail` makes calls of that kind fail."""

    def __init__(
        self,
        programs: list[str],
        *,
        answer: str = ANSWER,
        simulation: str = SIMULATION,
        fail: str | None = None,
    ) -> None:
        self.programs = list(programs)
        self.answer = answer
        self.simulation = simulation
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        what = kind(call)
        if what == self.fail:
            return BackendUnavailable("down")
        if what in ("code", "fix"):
            reply = self.programs.pop(0)
        elif what == "simulation":
            reply = self.simulation
        else:
            reply = self.answer if index == 0 else f"{self.answer} ({index})"
        self.replies.append(reply)
        return reply


def content(body: dict[str, Any]) -> Any:
    return body["choices"][0]["message"]["content"]


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def texts(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


def with_blocks(client: list[tuple[str, str]], *blocks: str) -> list[tuple[str, str]]:
    """The client's conversation with `blocks` after its last user turn's request."""
    role, request = client[-1]
    return [*client[:-1], (role, "\n\n".join((request, *blocks)))]


def observations(body: dict[str, Any]) -> list[str]:
    return [step["observation"] for step in trace_steps(body, "code")]


async def test_a_program_that_runs_is_answered_with_exact_calls_prompts_and_usage() -> None:
    coder = Coder([GOOD])
    backend = scripted(coder)
    response = await chat(
        backend,
        COC,
        settings=CODE_ON,
        messages=CONVERSATION,
        max_tokens=80,
        temperature=0.9,
        stop=["END"],
        seed=5,
        ponder={"trace": True},
    )
    assert response.status_code == 200
    body = response.json()
    assert content(body) == ANSWER
    assert kinds(backend) == ["code", "answer"]
    assert response.headers["x-ponder-backend-calls"] == "2"
    write, answer = backend.calls
    assert texts(write) == with_blocks(CLIENT, CODE_PROMPT)
    s = write.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 1024, (), 5)
    assert texts(answer) == with_blocks(
        CLIENT, CODE_INTRO, fenced(GOOD_CODE), OUTPUT_INTRO, "19", ANSWER_PROMPT
    )
    s = answer.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.9, 80, ("END",), 5)
    assert body["usage"] == usage_for(backend, coder.replies)
    (step,) = trace_steps(body, "code")
    assert step == {
        **step,
        "attempt": 0,
        "code": GOOD_CODE,
        "observation": "19",
        "ran": True,
    }
    assert trace_steps(body, "simulation") == []


async def test_a_program_that_fails_is_fixed_then_answered() -> None:
    coder = Coder([BROKEN, FIXED], answer=FRUIT_ANSWER)
    backend = scripted(coder)
    response = await chat(
        backend, COC, settings=CODE_ON, messages=FRUITS, seed=3, ponder={"trace": True}
    )
    body = response.json()
    assert content(body) == FRUIT_ANSWER
    assert kinds(backend) == ["code", "fix", "answer"]
    error, output = observations(body)
    assert error.startswith("Error: NameError: name 'is_fruit' is not defined\n[stderr]\n")
    assert error.endswith("\nNameError: name 'is_fruit' is not defined")
    assert output == "3"
    _, fix, answer = backend.calls
    assert texts(fix) == with_blocks(
        FRUIT_CLIENT, CODE_INTRO, fenced(BROKEN_CODE), RUN_INTRO, error, FIX_PROMPT
    )
    s = fix.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 1024, (), 3)
    assert texts(answer) == with_blocks(
        FRUIT_CLIENT, CODE_INTRO, fenced(FIXED_CODE), OUTPUT_INTRO, "3", ANSWER_PROMPT
    )
    assert [(s["attempt"], s["ran"]) for s in trace_steps(body, "code")] == [(0, False), (1, True)]
    assert body["usage"] == usage_for(backend, coder.replies)


async def test_a_program_that_fails_twice_is_simulated_then_answered() -> None:
    coder = Coder([BROKEN, STILL_BROKEN], answer=FRUIT_ANSWER)
    backend = scripted(coder)
    response = await chat(
        backend,
        COC,
        settings=CODE_ON,
        messages=FRUITS,
        max_tokens=50,
        seed=3,
        ponder={"trace": True},
    )
    body = response.json()
    assert content(body) == FRUIT_ANSWER
    assert kinds(backend) == ["code", "fix", "simulation", "answer"]
    assert response.headers["x-ponder-backend-calls"] == "4"
    first, second = observations(body)
    assert first.startswith("Error: NameError: name 'is_fruit' is not defined\n")
    assert second.startswith("Error: KeyError: 'plum'\n[stderr]\nTraceback (most recent call")
    _, fix, simulate, answer = backend.calls
    assert texts(fix) == with_blocks(
        FRUIT_CLIENT, CODE_INTRO, fenced(BROKEN_CODE), RUN_INTRO, first, FIX_PROMPT
    )
    assert texts(simulate) == with_blocks(
        FRUIT_CLIENT, CODE_INTRO, fenced(STILL_BROKEN_CODE), RUN_INTRO, second, SIMULATE_PROMPT
    )
    s = simulate.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 1024, (), 3)
    assert texts(answer) == with_blocks(
        FRUIT_CLIENT,
        CODE_INTRO,
        fenced(STILL_BROKEN_CODE),
        SIMULATION_INTRO,
        SIMULATION,
        ANSWER_PROMPT,
    )
    assert answer.sampling.max_tokens == 50
    (step,) = trace_steps(body, "simulation")
    assert step == {
        **step,
        "code": STILL_BROKEN_CODE,
        "error": second,
        "trace": SIMULATION,
    }
    assert [s["ran"] for s in trace_steps(body, "code")] == [False, False]
    assert body["usage"] == usage_for(backend, coder.replies)


async def test_a_program_that_prints_nothing_counts_as_failed() -> None:
    silent = "total = 6 * 4 - 5"
    backend = scripted(Coder([fenced(silent), GOOD]))
    response = await chat(backend, COC, settings=CODE_ON, messages=CONVERSATION)
    assert content(response.json()) == ANSWER
    assert kinds(backend) == ["code", "fix", "answer"]
    assert backend.calls[1].prompt.endswith(
        f"{fenced(silent)}\n\n{RUN_INTRO}\n\n{NO_OUTPUT}\n\n{FIX_PROMPT}"
    )


@pytest.mark.parametrize(
    ("fix_attempts", "programs", "expected"),
    [
        (0, [BROKEN], ["code", "simulation", "answer"]),
        (2, [BROKEN, STILL_BROKEN, FIXED], ["code", "fix", "fix", "answer"]),
        (2, [BROKEN, STILL_BROKEN, BROKEN], ["code", "fix", "fix", "simulation", "answer"]),
    ],
)
async def test_options_set_the_fixes_tokens_and_temperature(
    fix_attempts: int, programs: list[str], expected: list[str]
) -> None:
    backend = scripted(Coder(programs))
    options = {
        "fix_attempts": fix_attempts,
        "code_tokens": 64,
        "simulate_tokens": 32,
        "temperature": 0.5,
    }
    response = await chat(
        backend, COC, settings=CODE_ON, temperature=1.1, max_tokens=70, ponder={"coc": options}
    )
    assert content(response.json()) == ANSWER
    assert kinds(backend) == expected
    settings = {
        "code": (0.5, 64),
        "fix": (0.5, 64),
        "simulation": (0.0, 32),
        "answer": (1.1, 70),
    }
    for call in backend.calls:
        assert (call.sampling.temperature, call.sampling.max_tokens) == settings[kind(call)]
    if "simulation" in expected:  # the last program is the one simulated
        last = extract_code(programs[fix_attempts])
        assert f"{CODE_INTRO}\n\n{fenced(last)}\n\n{RUN_INTRO}" in backend.calls[-2].prompt


# ---- the sandbox holds ---------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 that the model's code should never reach."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    yield server
    server.close()


async def simulated_error(program: str) -> tuple[str, ScriptedBackend]:
    """Runs `program` through coc with no fixes: the sandbox's answer, as the simulation call
    was shown it."""
    backend = scripted(Coder([fenced(program)]))
    response = await chat(
        backend, COC, settings=CODE_ON, ponder={"coc": {"fix_attempts": 0}, "trace": True}
    )
    assert content(response.json()) == ANSWER
    assert kinds(backend) == ["code", "simulation", "answer"]
    (observation,) = observations(response.json())
    simulate = backend.calls[1].prompt
    assert simulate.endswith(f"{RUN_INTRO}\n\n{observation}\n\n{SIMULATE_PROMPT}")
    return observation, backend


async def test_the_code_cannot_reach_the_network(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    program = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(1)\n"
        f"s.connect(('127.0.0.1', {port}))\n"
        "print('connected')"
    )
    observation, _ = await simulated_error(program)
    assert observation.startswith("Error: PermissionError: sandbox: a network socket is not")
    assert "connected" not in observation.split("\n")
    with pytest.raises(TimeoutError):
        listener.accept()


async def test_the_code_cannot_read_files_outside_its_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("canary-secret-7d2e")
    observation, backend = await simulated_error(f"print(open({str(secret)!r}).read())")
    assert observation.startswith(f"Error: PermissionError: sandbox: reading {secret} is not")
    assert not any("canary-secret-7d2e" in m.text for c in backend.calls for m in c.messages)


@pytest.mark.parametrize(
    ("program", "event"),
    [
        ("import os\nos.system('echo escaped')", "os.system"),
        ("import subprocess\nsubprocess.run(['echo', 'escaped'])", "subprocess.Popen"),
    ],
)
async def test_the_code_cannot_start_processes(program: str, event: str) -> None:
    observation, _ = await simulated_error(program)
    assert observation.startswith(f"Error: PermissionError: sandbox: {event} is not allowed\n")
    assert "escaped" not in observation.split("\n")


# ---- refusals, failures, limits ------------------------------------------------------------


async def test_turned_off_by_default_refused_before_any_backend_call() -> None:
    backend = scripted(Coder([GOOD]))
    response = await chat(backend, COC)
    assert_error(response, 403, type="permission_error", code="permission_denied", param="model")
    assert "PONDER_ENABLE_CODE_EXECUTION" in response.json()["error"]["message"]
    assert backend.calls == []


@pytest.mark.parametrize(
    ("failing", "programs", "calls"),
    [
        ("code", [], 1),
        ("fix", [BROKEN], 2),
        ("simulation", [BROKEN, STILL_BROKEN], 3),
        ("answer", [GOOD], 2),
    ],
)
async def test_a_failed_call_is_an_openai_shaped_503(
    failing: str, programs: list[str], calls: int
) -> None:
    backend = scripted(Coder(programs, fail=failing))
    response = await chat(backend, COC, settings=CODE_ON)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )
    assert len(backend.calls) == calls


async def test_a_failed_simulation_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Coder([BROKEN, STILL_BROKEN], fail="simulation"))
    response = await chat(backend, COC, settings=CODE_ON, stream=True)
    assert response.status_code == 200  # the programs' reasoning lines went out first
    assert stream_error(response.text)["code"] == "backend_unavailable"
    deltas = [
        choice["delta"]
        for data in sse_data(response.text)[:-1]
        for choice in json.loads(data)["choices"]
    ]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert f"Fix 1:\n{fenced(STILL_BROKEN_CODE)}\nOutput:\nError: KeyError: 'plum'" in reasoning
    assert not any(d.get("content") for d in deltas)


@pytest.mark.parametrize(("limit", "programs"), [(1, [GOOD]), (3, [BROKEN, STILL_BROKEN])])
async def test_a_budget_below_the_calls_needed_is_a_400(limit: int, programs: list[str]) -> None:
    backend = scripted(Coder(programs))
    response = await chat(backend, COC, settings=CODE_ON, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_calls_is_enough() -> None:
    backend = scripted(Coder([BROKEN, STILL_BROKEN]))
    response = await chat(backend, COC, settings=CODE_ON, ponder={"max_backend_calls": 4})
    assert content(response.json()) == ANSWER


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Coder([GOOD]))
    response = await chat(backend, MODEL, settings=CODE_ON, optillm_approach="coc")
    assert content(response.json()) == ANSWER
    assert kinds(backend) == ["code", "answer"]


async def test_request_n_is_drawn_by_the_answer_call_from_one_program() -> None:
    coder = Coder([GOOD])
    backend = scripted(coder)
    response = await chat(backend, COC, settings=CODE_ON, n=2)
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == [ANSWER, f"{ANSWER} (1)"]
    assert [(kind(c), c.n) for c in backend.calls] == [("code", 1), ("answer", 2)]
    # both choices come from the one answer call: only the program is reasoning
    chosen = [ANSWER, f"{ANSWER} (1)"]
    expected = usage_for(backend, coder.replies, answer="")  # all replies, less the choices:
    expected["completion_tokens_details"]["reasoning_tokens"] -= sum(map(count_tokens, chosen))
    assert body["usage"] == expected


# ---- streaming -----------------------------------------------------------------------------


async def test_streams_the_program_and_its_output_as_reasoning_then_the_answer() -> None:
    backend = scripted(Coder([GOOD]))
    response = await chat(backend, COC, settings=CODE_ON, stream=True)
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        f"Code:\n{fenced(GOOD_CODE)}\nOutput:\n19\n"
    )
    assert streamed_text(response.text) == ANSWER
    assert [c.stream for c in backend.calls] == [False, True]

    response = await chat(
        scripted(Coder([GOOD])), COC, settings=CODE_ON, stream=True, ponder={"reasoning": False}
    )
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == ANSWER


async def test_streams_the_fix_and_the_simulation_as_reasoning() -> None:
    backend = scripted(Coder([BROKEN, STILL_BROKEN]))
    response = await chat(backend, COC, settings=CODE_ON, stream=True, ponder={"trace": True})
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith(
        f"Code:\n{fenced(BROKEN_CODE)}\nOutput:\nError: NameError: name 'is_fruit' is not"
    )
    fix = reasoning.index(f"\nFix 1:\n{fenced(STILL_BROKEN_CODE)}\nOutput:\nError: KeyError")
    assert reasoning.endswith(f"\nSimulating the program line by line:\n{SIMULATION}\n")
    assert fix < reasoning.index("\nSimulating")
    assert streamed_text(response.text) == ANSWER


# ---- reading the program -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (GOOD, GOOD_CODE),
        ("```\nprint(1)\n```\nthen\n```python\nprint(2)\n```", "print(2)"),
        ("```text\nnotes\n```\n```bash\nls\n```", "notes"),
        ("```Python3 main.py\n  x = 1\n  print(x)\n```", "  x = 1\n  print(x)"),
        ("Here:\n```python\nprint(1)\nprint(", "print(1)\nprint("),  # cut off
        ("print(6 * 7)", "print(6 * 7)"),
        ("", ""),
        (None, ""),
    ],
)
def test_extract_code(reply: str | None, code: str) -> None:
    assert extract_code(reply) == code
