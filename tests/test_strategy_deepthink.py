"""`deepthink`: SELF-DISCOVER's select, adapt and implement, then chains of thought with the
structure, routed to a greedy answer when they do not agree enough."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.deepthink import (
    ADAPT_PROMPT,
    DEFAULT_MODULES,
    IMPLEMENT_PROMPT,
    MAX_SELECTED,
    MODULES,
    SELECT_PROMPT,
    SOLVE_INSTRUCTIONS,
    numbered,
    selected_modules,
    structure_of,
)
from ponder.testing import Call, Reply
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_events,
    stream_error,
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
)

DEEPTHINK = f"deepthink-{MODEL}"
SELECTION = "1. Decompose\n3. Check arithmetic\nAlso: Units"
ADAPTED = "Split the purchase into two steps.\nRedo the addition.\nCount apples, not bags."
STRUCTURE = '{"Step 1: apples at the start": "", "Step 2: apples bought": "", "Final answer": ""}'
PLAN = f"Here is the plan:\n```json\n{STRUCTURE}\n```"
AGREE = ["40 + 2 = 42. The answer is 42.", "The answer is 43.", "So \\boxed{42}."]
SPLIT = ["The answer is 41.", "The answer is 42.", "The answer is 43."]
GREEDY = "Step 1: 40. Step 2: 2 more. The answer is 42."

SYSTEM = "Show your working."
CONVERSATION = conversation(
    SYSTEM,
    "I have some apples.",
    "How many?",
    "Tom has 40 apples and buys 2 more. How many does he have?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]


def kind(call: Call) -> str:
    for name, prompt in (
        ("select", SELECT_PROMPT),
        ("adapt", ADAPT_PROMPT),
        ("implement", IMPLEMENT_PROMPT),
    ):
        if call.prompt.endswith(prompt[-24:]):
            return name
    return "greedy" if call.sampling.temperature == 0 else "chain"


class Thinker:
    """A scripted model for deepthink: the plan's three replies, the chains in order, the greedy
    answer; `fail` makes one kind of call fail."""

    def __init__(
        self,
        chains: Sequence[Reply],
        plan: Mapping[str, str] | None = None,
        fail: str | None = None,
    ) -> None:
        self.plan = {"select": SELECTION, "adapt": ADAPTED, "implement": PLAN, **(plan or {})}
        self.chains = list(chains)
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        reply: Reply
        if k == "chain":
            reply = self.chains.pop(0)
        elif k == "greedy":
            reply = GREEDY
        else:
            reply = self.plan[k]
        self.replies.append(reply if isinstance(reply, str) else reply.content or "")
        return reply


def content(body: Mapping[str, object]) -> str:
    choices = body["choices"]
    assert isinstance(choices, list)
    return str(choices[0]["message"]["content"])


def kinds(calls: Sequence[Call]) -> list[str]:
    return [kind(c) for c in calls]


PLANNING = ["select", "adapt", "implement"]


async def test_agreeing_chains_give_the_answer_with_exact_calls_and_usage() -> None:
    model = Thinker(AGREE)
    backend = scripted(model)
    response = await chat(backend, DEEPTHINK, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert content(body) == AGREE[0]
    assert len(backend.calls) == 6
    assert response.headers["x-ponder-backend-calls"] == "6"
    assert kinds(backend.calls) == [*PLANNING, "chain", "chain", "chain"]
    (select,) = trace_steps(body, "select")
    assert (select["modules"], select["parsed"]) == (
        ["Decompose", "Check arithmetic", "Units"],
        True,
    )
    assert trace_steps(body, "adapt")[0]["adapted"] == ADAPTED
    assert trace_steps(body, "implement")[0]["structure"] == STRUCTURE
    (chains,) = trace_steps(body, "chains")
    assert (chains["tally"], chains["winner"]) == ({"42": 2, "43": 1}, "42")
    assert (chains["share"], chains["routed"]) == (0.6667, "majority")
    assert body["usage"] == usage_for(backend, model.replies, answer=AGREE[0])


async def test_prompts_keep_the_conversation_and_carry_each_stage() -> None:
    backend = scripted(Thinker(SPLIT))
    response = await chat(
        backend, DEEPTHINK, messages=CONVERSATION, max_tokens=300, stop=["END"], seed=9
    )
    assert response.status_code == 200
    select, adapt, implement, *chains, greedy = backend.calls
    everything = numbered(range(len(MODULES)))
    assert everything.splitlines()[2] == f"3. {MODULES[2][0]}: {MODULES[2][1]}"
    chosen = numbered([0, 2, 13])
    for call, stage in (
        (select, SELECT_PROMPT.format(modules=everything)),
        (adapt, ADAPT_PROMPT.format(modules=chosen)),
        (implement, IMPLEMENT_PROMPT.format(adapted=ADAPTED)),
    ):
        assert [(m.role, m.text) for m in call.messages] == [
            *CLIENT[:-1],
            ("user", f"{REQUEST}\n\n{stage}"),
        ]
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed, call.n) == (0.0, 512, (), 9, 1)
    solving = [
        ("system", f"{SYSTEM}\n\n{SOLVE_INSTRUCTIONS.format(structure=STRUCTURE)}"),
        *CLIENT[1:],
    ]
    assert len(chains) == 3
    for call in chains:
        assert [(m.role, m.text) for m in call.messages] == solving
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, 300, ("END",), 9)
    assert [(m.role, m.text) for m in greedy.messages] == solving
    s = greedy.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 300, ("END",), 9)


async def test_disagreeing_chains_route_to_one_greedy_call() -> None:
    model = Thinker(SPLIT)
    backend = scripted(model)
    response = await chat(backend, DEEPTHINK, ponder={"trace": True})
    body = response.json()
    assert content(body) == GREEDY
    assert len(backend.calls) == 7
    assert response.headers["x-ponder-backend-calls"] == "7"
    assert kinds(backend.calls) == [*PLANNING, "chain", "chain", "chain", "greedy"]
    (chains,) = trace_steps(body, "chains")
    assert (chains["share"], chains["routed"]) == (0.3333, "greedy")
    assert body["usage"] == usage_for(backend, model.replies)


@pytest.mark.parametrize(
    ("threshold", "routed", "calls"), [(0.6, "majority", 6), (0.7, "greedy", 7), (0, "majority", 6)]
)
async def test_the_threshold_decides_the_route(threshold: float, routed: str, calls: int) -> None:
    backend = scripted(Thinker(AGREE))
    response = await chat(
        backend, DEEPTHINK, ponder={"deepthink": {"threshold": threshold}, "trace": True}
    )
    body = response.json()
    assert content(body) == (AGREE[0] if routed == "majority" else GREEDY)
    assert trace_steps(body, "chains")[0]["routed"] == routed
    assert len(backend.calls) == calls


async def test_chains_and_temperature_are_options() -> None:
    chains = ["The answer is 5."] * 2 + ["The answer is 6."] * 3
    backend = scripted(Thinker(chains))
    response = await chat(
        backend,
        DEEPTHINK,
        temperature=0,
        ponder={"deepthink": {"chains": 5, "temperature": 1.1, "plan_tokens": 64}},
    )
    # 3 of 5 agree: a share of 0.6 reaches the default threshold
    assert content(response.json()) == "The answer is 6."
    assert len(backend.calls) == 8
    assert [c.sampling.max_tokens for c in backend.calls[:3]] == [64] * 3
    assert {c.sampling.temperature for c in backend.calls[3:]} == {1.1}


async def test_a_client_temperature_above_zero_is_kept_for_the_chains() -> None:
    backend = scripted(Thinker(SPLIT))
    await chat(backend, DEEPTHINK, temperature=0.9)
    assert [c.sampling.temperature for c in backend.calls] == [0.0] * 3 + [0.9] * 3 + [0.0]


async def test_unparseable_stages_fall_back() -> None:
    plan = {"select": "I would pick the useful ones.", "adapt": "  ", "implement": "Just solve."}
    backend = scripted(Thinker(AGREE, plan))
    response = await chat(backend, DEEPTHINK, ponder={"trace": True})
    body = response.json()
    assert content(body) == AGREE[0]
    defaults = [MODULES[i][0] for i in DEFAULT_MODULES]
    assert trace_steps(body, "select")[0] == {
        **trace_steps(body, "select")[0],
        "modules": defaults,
        "parsed": False,
    }
    _, adapt, implement, chain, *_ = backend.calls
    assert adapt.prompt.endswith(ADAPT_PROMPT.format(modules=numbered(DEFAULT_MODULES)))
    # an empty adaptation: the selected modules themselves are implemented
    assert implement.prompt.endswith(IMPLEMENT_PROMPT.format(adapted=numbered(DEFAULT_MODULES)))
    # a plan without a JSON object is used as written
    assert chain.messages[0].text == SOLVE_INSTRUCTIONS.format(structure="Just solve.")


@pytest.mark.parametrize("named", [MAX_SELECTED + 1, len(MODULES)])
async def test_a_selection_that_names_too_many_modules_falls_back_to_the_defaults(
    named: int,
) -> None:
    listing = "\n".join(f"{i + 1}. {MODULES[i][0]}" for i in range(named))
    backend = scripted(Thinker(AGREE, {"select": listing}))
    response = await chat(backend, DEEPTHINK, ponder={"trace": True})
    (select,) = trace_steps(response.json(), "select")
    assert select["modules"] == [MODULES[i][0] for i in DEFAULT_MODULES]
    assert (select["parsed"], select["named"], select["default"]) == (True, named, True)
    assert backend.calls[1].prompt.endswith(ADAPT_PROMPT.format(modules=numbered(DEFAULT_MODULES)))

    five = "\n".join(f"{i + 1}. {MODULES[i][0]}" for i in range(MAX_SELECTED))
    backend = scripted(Thinker(AGREE, {"select": five}))
    response = await chat(backend, DEEPTHINK, ponder={"trace": True})
    (select,) = trace_steps(response.json(), "select")
    assert select["modules"] == [MODULES[i][0] for i in range(MAX_SELECTED)]
    assert select["default"] is False


async def test_an_empty_plan_uses_the_adapted_modules() -> None:
    backend = scripted(Thinker(AGREE, {"implement": ""}))
    await chat(backend, DEEPTHINK)
    assert backend.calls[3].messages[0].text == SOLVE_INSTRUCTIONS.format(structure=ADAPTED)


async def test_chains_without_an_answer_route_to_the_greedy_call() -> None:
    cut = [Completion(f"Step {i}: 40 + 2 is", finish_reason="length") for i in range(3)]
    backend = scripted(Thinker(cut))
    response = await chat(backend, DEEPTHINK, ponder={"trace": True})
    body = response.json()
    assert content(body) == GREEDY
    (chains,) = trace_steps(body, "chains")
    assert (chains["winner"], chains["tally"], chains["routed"]) == (None, {}, "greedy")


@pytest.mark.parametrize(
    ("reply", "chosen"),
    [
        ("1. Decompose\n3. Check arithmetic", [0, 2]),
        ("- Module 7: Equations\n* 11) Estimate", [6, 10]),
        ("I pick work backwards and edge cases.", [1, 14]),
        ("17. Nothing\n0. Nothing", []),
        ("", []),
    ],
)
def test_selected_modules(reply: str, chosen: list[int]) -> None:
    assert selected_modules(reply) == chosen


@pytest.mark.parametrize(
    ("reply", "structure"),
    [
        (PLAN, STRUCTURE),
        ('{"a": {"b": ""}} done', '{"a": {"b": ""}}'),
        ("  Step 1, then step 2.  ", "Step 1, then step 2."),
        ("} {", "} {"),
    ],
)
def test_structure_of(reply: str, structure: str) -> None:
    assert structure_of(reply) == structure


async def test_the_chains_are_in_flight_at_once_after_the_plan() -> None:
    model = Thinker(AGREE)
    planning_in_flight: list[int] = []
    chaining = 0
    all_chaining = asyncio.Event()
    open_gate = asyncio.Event()

    async def reply(call: Call, index: int) -> Reply:
        nonlocal chaining
        if kind(call) == "chain":
            chaining += 1
            if chaining == 3:
                all_chaining.set()
            await open_gate.wait()  # no chain may finish before all three have started
        else:
            planning_in_flight.append(backend.in_flight)
        return model(call, index)

    backend = scripted(reply)
    request = asyncio.create_task(chat(backend, DEEPTHINK))
    async with asyncio.timeout(5):
        await all_chaining.wait()
    assert planning_in_flight == [1, 1, 1]  # select, adapt, implement: one after another
    assert backend.in_flight == 3
    assert kinds(backend.calls) == [*PLANNING, "chain", "chain", "chain"]
    open_gate.set()
    response = await request
    assert content(response.json()) == AGREE[0]
    assert backend.max_in_flight == 3


async def test_native_n_draws_the_chains_in_one_call() -> None:
    model = Thinker(SPLIT)
    backend = scripted(model, capabilities=Capabilities(native_n=True))
    response = await chat(backend, DEEPTHINK)
    assert content(response.json()) == GREEDY
    assert [c.n for c in backend.calls] == [1, 1, 1, 3, 1]
    assert response.headers["x-ponder-backend-calls"] == "5"
    assert response.json()["usage"] == usage_for(backend, model.replies)


async def test_streams_the_working_then_the_majority_chain() -> None:
    model = Thinker(AGREE)
    backend = scripted(model)
    response = await chat(backend, DEEPTHINK, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Modules: Decompose, Check arithmetic, Units\n"
        f"Adapted: {' '.join(ADAPTED.split())}\n"
        f"Structure: {STRUCTURE}\n"
        "Chain 1: 42\nChain 2: 43\nChain 3: 42\n"
        "Agreement: 42 (2 of 3, 0.67 >= 0.6)\n"
    )
    assert streamed_text(response.text) == AGREE[0]
    assert not any(c.stream for c in backend.calls)
    usage = usage_for(backend, model.replies, answer=AGREE[0])
    assert sse_events(response.text)[-1]["usage"] == usage


async def test_streams_the_greedy_answer_token_by_token() -> None:
    model = Thinker(SPLIT)
    backend = scripted(model)
    response = await chat(backend, DEEPTHINK, stream=True, stream_options={"include_usage": True})
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.endswith("Agreement: 41 (1 of 3, 0.33 < 0.6): answering greedily\n")
    assert streamed_text(response.text) == GREEDY
    assert len(streamed_pieces(response.text)) == len(GREEDY.split())
    assert [c.stream for c in backend.calls] == [False] * 6 + [True]
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, model.replies)


@pytest.mark.parametrize("failing", ["select", "adapt", "implement", "chain", "greedy"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    response = await chat(scripted(Thinker(SPLIT, fail=failing)), DEEPTHINK)
    assert_error(response, 503, type="api_error", code="backend_unavailable", message="down")


async def test_a_failed_greedy_call_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Thinker(SPLIT, fail="greedy"))
    response = await chat(backend, DEEPTHINK, stream=True)
    assert response.status_code == 200  # the working went out first
    assert '"reasoning_content":"Chain 3: 43\\n"' in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"


@pytest.mark.parametrize(("chains", "limit"), [(AGREE, 1), (AGREE, 3), (AGREE, 5), (SPLIT, 6)])
async def test_a_budget_below_what_deepthink_needs_is_a_400(chains: list[str], limit: int) -> None:
    backend = scripted(Thinker(chains))
    response = await chat(backend, DEEPTHINK, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_route_taken_is_enough() -> None:
    backend = scripted(Thinker(AGREE))
    response = await chat(backend, DEEPTHINK, ponder={"max_backend_calls": 6})
    assert content(response.json()) == AGREE[0]


async def test_optillm_approach_deepthink_selects_it() -> None:
    backend = scripted(Thinker(AGREE))
    response = await chat(backend, MODEL, optillm_approach="deepthink")
    assert content(response.json()) == AGREE[0]
    assert response.headers["x-ponder-backend-calls"] == "6"
    assert kinds(backend.calls) == [*PLANNING, "chain", "chain", "chain"]
