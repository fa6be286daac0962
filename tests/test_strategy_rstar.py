"""`rstar`: a tree search over rStar's five actions, a check of each trajectory from half of its
lines, and a final answer written from the chosen trajectory."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.rstar import (
    FINAL_PROMPT,
    PARTIAL_INTRO,
    REANSWER_PROMPT,
    REPHRASE_PROMPT,
    REPHRASED_INTRO,
    REST_PROMPT,
    STEP_PROMPT,
    SUBQUESTION_PROMPT,
    Node,
    Step,
    choose,
    prefix_lines,
    states_answer,
    uct,
)
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

RSTAR = f"rstar-{MODEL}"
CONVERSATION = conversation(
    "Answer briefly.",
    "I have a puzzle for you.",
    "Go ahead.",
    "Tom has 3 boxes of 4 apples and eats 2. How many are left?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]

ONE_STEP = "3 boxes of 4 apples make 12 apples."
SUB = "Sub-question: How many apples are there?\nSub-answer: 3 * 4 = 12."
REANSWER = "3 boxes hold 4 each, so 12 in all."
REPHRASED = "Conditions: 3 boxes; 4 apples each; 2 eaten.\nQuestion: how many apples are left?"
REST = "12 - 2 = 10.\nThe answer is 10."
WRONG_REST = "3 * 4 = 12, plus 2 is 14.\nThe answer is 14."
FINAL = "Tom has 10 apples left."

# the material each kind of partial trajectory puts before the action's prompt
AFTER_STEP = f"{PARTIAL_INTRO}\n\nStep 1: {ONE_STEP}\n\n"
AFTER_SUB = f"{PARTIAL_INTRO}\n\nStep 1: {SUB}\n\n"
REPHRASING = f"{REPHRASED_INTRO}\n\n{REPHRASED}\n\n"

ACTIONS = (
    ("step", STEP_PROMPT),
    ("rest", REST_PROMPT),
    ("sub", SUBQUESTION_PROMPT),
    ("reanswer", REANSWER_PROMPT),
    ("rephrase", REPHRASE_PROMPT),
)

# The trajectories the default search finds with the scripted model, in order, and what each
# one's check (its completion from half of its lines) is shown.
TRAJECTORIES = [
    f"Step 1: {WRONG_REST}",
    f"Step 1: {ONE_STEP}\nStep 2: {REST}",
    f"Step 1: {SUB}\nStep 2: {REST}",
    f"Step 1: {REST}",  # under the rephrasing
]
CHECKS = [
    f"{PARTIAL_INTRO}\n\nStep 1: 3 * 4 = 12, plus 2 is 14.\n\n",
    AFTER_STEP,
    AFTER_SUB,
    f"{REPHRASING}{PARTIAL_INTRO}\n\nStep 1: 12 - 2 = 10.\n\n",
]


def kind(call: Call) -> str:
    if call.prompt in (FINAL_PROMPT, REQUEST, "hello"):
        return "final"  # from the chosen trajectory, or from the conversation alone
    for name, prompt in ACTIONS:
        if call.prompt.endswith(prompt):
            return name
    raise AssertionError(f"unexpected call: {call.prompt!r}")


def material(call: Call) -> str:
    """What the call shows between the client's request and the action's prompt."""
    action = dict(ACTIONS)[kind(call)]
    return call.prompt.removeprefix(f"{REQUEST}\n\n").removeprefix("hello\n\n")[: -len(action)]


class Model:
    """A scripted model for rstar. Each action gives one fixed reply, except A2 (the remaining
    steps), whose reply depends on the material it is shown (`rests`, else `REST`); the root's
    A2 answers 14, every other one 10 (a list of replies is given in turn: an A2 expansion and a
    check can be shown the same material). `fail_at` makes that call (counted from 1) fail."""

    def __init__(
        self,
        *,
        step: Reply = ONE_STEP,
        rests: dict[str, Reply | list[Reply]] | None = None,
        sub: Reply = SUB,
        reanswer: Reply = REANSWER,
        rephrased: Reply = REPHRASED,
        fail_at: int | None = None,
    ) -> None:
        self.rests: dict[str, Reply | list[Reply]] = {"": WRONG_REST, **(rests or {})}
        self.fixed: dict[str, Reply] = {
            "step": step,
            "sub": sub,
            "reanswer": reanswer,
            "rephrase": rephrased,
            "final": FINAL,
        }
        self.fail_at = fail_at
        self.count = 0
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        self.count += 1
        if self.count == self.fail_at:
            return BackendUnavailable("down")
        k = kind(call)
        reply = self.rest(material(call)) if k == "rest" else self.fixed[k]
        if isinstance(reply, Completion):
            self.replies.append(reply.content or "")
        elif isinstance(reply, str):
            self.replies.append(reply)
        return reply

    def rest(self, shown: str) -> Reply:
        """The A2 reply to `shown`: a list gives its replies in turn, the last one from then on."""
        reply = self.rests.get(shown, REST)
        if isinstance(reply, list):
            return reply.pop(0) if len(reply) > 1 else reply[0]
        return reply


def kinds(backend: ScriptedBackend) -> list[str]:
    return [kind(c) for c in backend.calls]


def answer(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


# Rollout by rollout at the defaults: the root's four actions (its A2 answers 14); then its
# unvisited children in order: A1's node (3 actions), A3's (4, with A4), A5's (3); the fifth
# rollout's UCT picks the root's A2 answer again (no call). 4 checks and the final call.
SEARCH = [
    *["step", "rest", "sub", "rephrase"],
    *["step", "rest", "sub"],
    *["step", "rest", "sub", "reanswer"],
    *["step", "rest", "sub"],
]
ALL_CALLS = [*SEARCH, *["rest"] * 4, "final"]


async def test_the_search_checks_and_answers_from_the_best_confirmed_trajectory() -> None:
    model = Model()
    backend = scripted(model)
    response = await chat(backend, RSTAR, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert answer(response) == FINAL
    assert kinds(backend) == ALL_CALLS
    assert response.headers["x-ponder-backend-calls"] == "19"
    assert body["usage"] == usage_for(backend, model.replies)

    rollouts = trace_steps(body, "rollout")
    assert [r["path"] for r in rollouts] == [
        ["root"],
        ["root", "one_step"],
        ["root", "subquestion"],
        ["root", "rephrase"],
        ["root", "remaining_steps"],
    ]
    assert [r["answers"] for r in rollouts] == [["14"], ["10"], ["10"], ["10"], []]
    # each new answer's share of the answers found so far; the fifth re-scores 14 (1 of 4)
    assert [r["reward"] for r in rollouts] == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4, 1 / 4])
    assert rollouts[0]["expanded"] == [["one_step", "remaining_steps", "subquestion", "rephrase"]]
    assert rollouts[2]["expanded"] == [["one_step", "remaining_steps", "subquestion", "reanswer"]]
    assert rollouts[4]["expanded"] == []

    (check,) = trace_steps(body, "discrimination")
    assert check["trajectories"] == TRAJECTORIES
    assert check["rephrased"] == [False, False, False, True]
    assert check["answers"] == ["14", "10", "10", "10"]
    assert check["kept_lines"] == [1, 1, 2, 1]
    assert check["completed"] == ["10", "10", "10", "10"]
    assert check["agreed"] == [False, True, True, True]
    # the 14 was scored 1 and then 1/4: its mean is 5/8
    assert check["rewards"] == pytest.approx([5 / 8, 1 / 2, 2 / 3, 3 / 4])
    (choice,) = trace_steps(body, "choice")
    assert (choice["chosen"], choice["answer"], choice["confirmed"]) == (4, "10", True)
    assert choice["reward"] == pytest.approx(3 / 4)


async def test_prompts_keep_the_conversation_and_carry_the_material_after_the_request() -> None:
    backend = scripted(Model())
    await chat(backend, RSTAR, messages=CONVERSATION)

    def shown(material: str, prompt: str) -> list[tuple[str, str]]:
        return [*CLIENT[:-1], ("user", f"{REQUEST}\n\n{material}{prompt}")]

    turns = [[(m.role, m.text) for m in c.messages] for c in backend.calls]
    prompts = [STEP_PROMPT, REST_PROMPT, SUBQUESTION_PROMPT]
    assert turns[:4] == [shown("", p) for p in [*prompts, REPHRASE_PROMPT]]
    assert turns[4:7] == [shown(AFTER_STEP, p) for p in prompts]
    assert turns[7:11] == [shown(AFTER_SUB, p) for p in [*prompts, REANSWER_PROMPT]]
    assert turns[11:14] == [shown(REPHRASING, p) for p in prompts]
    assert turns[14:18] == [shown(m, REST_PROMPT) for m in CHECKS]
    # the final call: the chosen trajectory as the model's turn, then the request for the answer
    assert turns[18] == [*CLIENT, ("assistant", TRAJECTORIES[3]), ("user", FINAL_PROMPT)]


async def test_sampling_of_each_kind_of_call() -> None:
    backend = scripted(Model())
    await chat(
        backend,
        RSTAR,
        max_tokens=80,
        stop=["END"],
        seed=5,
        ponder={"rstar": {"step_tokens": 100, "answer_tokens": 300}},
    )
    limits = {"step": 100, "sub": 100, "rephrase": 100, "rest": 300, "reanswer": 300}
    for call in backend.calls[:-1]:
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, limits[kind(call)], (), 5)
        assert not call.stream and call.n == 1
    s = backend.calls[-1].sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (None, 80, ("END",), 5)


async def test_a_client_temperature_drives_the_search() -> None:
    backend = scripted(Model())
    await chat(backend, RSTAR, temperature=1.1, ponder={"rstar": {"temperature": 0.3}})
    assert {c.sampling.temperature for c in backend.calls} == {1.1}
    backend = scripted(Model())
    await chat(backend, RSTAR, temperature=0, ponder={"rstar": {"temperature": 0.3}})
    assert {c.sampling.temperature for c in backend.calls[:-1]} == {0.3}
    assert backend.calls[-1].sampling.temperature == 0


async def test_without_its_check_the_best_trajectory_gives_way_to_the_next_confirmed() -> None:
    # the rephrased trajectory's completion now ends at 9: the sub-question one (2/3) wins
    backend = scripted(Model(rests={CHECKS[3]: "12 - 3 = 9.\nThe answer is 9."}))
    response = await chat(backend, RSTAR, ponder={"trace": True})
    assert answer(response) == FINAL
    (check,) = trace_steps(response.json(), "discrimination")
    assert check["agreed"] == [False, True, True, False]
    (choice,) = trace_steps(response.json(), "choice")
    assert (choice["chosen"], choice["confirmed"]) == (3, True)
    final = backend.calls[-1].messages
    assert (final[-2].role, final[-2].text) == ("assistant", TRAJECTORIES[2])


async def test_with_no_trajectory_confirmed_the_highest_reward_wins() -> None:
    seven = "So 7.\nThe answer is 7."
    # the second and third checks are shown what their trajectories' A2 calls were shown
    rests: dict[str, Reply | list[Reply]] = {
        CHECKS[0]: seven,
        CHECKS[1]: [REST, seven],
        CHECKS[2]: [REST, seven],
        CHECKS[3]: seven,
    }
    response = await chat(scripted(Model(rests=rests)), RSTAR, ponder={"trace": True})
    (check,) = trace_steps(response.json(), "discrimination")
    assert check["agreed"] == [False] * 4
    (choice,) = trace_steps(response.json(), "choice")
    assert (choice["chosen"], choice["confirmed"]) == (4, False)


async def test_a_cut_off_completion_confirms_nothing() -> None:
    cut = Completion("12 - 2 = 10. The answer is 10", finish_reason="length")
    response = await chat(scripted(Model(rests={CHECKS[3]: cut})), RSTAR, ponder={"trace": True})
    (check,) = trace_steps(response.json(), "discrimination")
    assert check["completed"][3] is None
    assert check["agreed"] == [False, True, True, False]


async def test_a_reanswer_replaces_the_last_sub_answer_and_can_finish() -> None:
    reanswer = "Carefully: 3 * 4 = 12 and 12 - 2 = 10. The answer is 10."
    backend = scripted(Model(reanswer=reanswer))
    response = await chat(backend, RSTAR, ponder={"trace": True, "rstar": {"rollouts": 3}})
    body = response.json()
    rollouts = trace_steps(body, "rollout")
    assert rollouts[2]["answers"] == ["10", "10"]  # A3's node: its A2 and its A4 both finish
    (check,) = trace_steps(body, "discrimination")
    assert check["trajectories"][3] == (
        f"Step 1: Sub-question: How many apples are there?\nSub-answer: {reanswer}"
    )
    # the third rollout's two answers share the rollout's reward: 3/4 each
    assert rollouts[2]["reward"] == pytest.approx(3 / 4)
    assert kinds(backend)[-5:] == ["rest"] * 4 + ["final"]


async def test_a_step_that_states_its_answer_is_terminal() -> None:
    step = "3 * 4 - 2 = 10. The answer is 10."
    backend = scripted(Model(step=step))
    response = await chat(backend, RSTAR, ponder={"trace": True, "rstar": {"rollouts": 2}})
    rollouts = trace_steps(response.json(), "rollout")
    # the root's A1 and A2 both finish; the second rollout goes to the A3 node, the first open
    assert rollouts[0]["answers"] == ["10", "14"]
    assert rollouts[1]["path"] == ["root", "subquestion"]
    assert rollouts[1]["answers"] == ["10", "10"]
    (check,) = trace_steps(response.json(), "discrimination")
    assert check["rewards"] == pytest.approx([1 / 2, 1 / 2, 3 / 4, 3 / 4])
    assert check["agreed"] == [False, False, True, True]
    # the last two tie on reward and on their answer's share: the earlier wins
    (choice,) = trace_steps(response.json(), "choice")
    assert (choice["chosen"], choice["answer"]) == (3, "10")


async def test_a_step_that_states_the_formats_placeholder_is_not_terminal() -> None:
    """The prompts show `"The answer is <answer>."`; a small model may copy it as it is."""
    step = "3 * 4 - 2 = 10. The answer is <answer>."
    backend = scripted(Model(step=step))
    response = await chat(backend, RSTAR, ponder={"trace": True, "rstar": {"rollouts": 2}})
    rollouts = trace_steps(response.json(), "rollout")
    # as with a step that states nothing: only the root's A2 finishes, and the second rollout
    # expands the A1 node, whose A2 finishes
    assert rollouts[0]["answers"] == ["14"]
    assert (rollouts[1]["path"], rollouts[1]["answers"]) == (["root", "one_step"], ["10"])
    assert kinds(backend)[:7] == [*["step", "rest", "sub", "rephrase"], *["step", "rest", "sub"]]


async def test_without_an_answer_the_rollout_goes_deeper_until_max_depth() -> None:
    cut = Completion("3 * 4 = 12, then", finish_reason="length")
    model = Model(rests={"": cut, AFTER_STEP: cut})
    backend = scripted(model)
    response = await chat(
        backend,
        RSTAR,
        messages=CONVERSATION,
        ponder={"trace": True, "rstar": {"rollouts": 1, "max_depth": 2}},
    )
    # the root's A2 is cut off: the rollout expands its first open child (A1's node), whose
    # children are at max_depth; nothing finished, so the answer comes from the conversation
    assert kinds(backend) == [
        *["step", "rest", "sub", "rephrase"],
        *["step", "rest", "sub"],
        "final",
    ]
    (rollout,) = trace_steps(response.json(), "rollout")
    assert (rollout["path"], rollout["answers"], rollout["reward"]) == (
        ["root", "one_step"],
        [],
        0,
    )
    assert [(m.role, m.text) for m in backend.calls[-1].messages] == CLIENT
    assert not trace_steps(response.json(), "discrimination")
    assert answer(response) == FINAL
    assert response.json()["usage"] == usage_for(backend, model.replies)


async def test_max_depth_one_expands_only_the_root() -> None:
    backend = scripted(Model())
    response = await chat(
        backend, RSTAR, ponder={"trace": True, "rstar": {"rollouts": 3, "max_depth": 1}}
    )
    # the root's open children are dead ends at depth 1; later rollouts re-score the answer
    assert kinds(backend) == ["step", "rest", "sub", "rephrase", "rest", "final"]
    rollouts = trace_steps(response.json(), "rollout")
    assert [r["path"] for r in rollouts] == [["root"], *[["root", "remaining_steps"]] * 2]


async def test_the_actions_of_a_node_run_at_once_and_so_do_the_checks() -> None:
    backend = scripted(Model())
    backend.hold()
    request = asyncio.create_task(chat(backend, RSTAR))
    made = 0
    for width in (4, 3, 4, 3, 4, 1):
        made += width
        async with asyncio.timeout(5):
            while len(backend.calls) < made or backend.in_flight < width:  # noqa: ASYNC110
                await asyncio.sleep(0)
        # the whole stage waits at the gate together, and nothing of the next has started
        assert (len(backend.calls), backend.in_flight) == (made, width)
        backend.release()
        backend.hold()
    backend.release()
    response = await request
    assert answer(response) == FINAL
    assert backend.max_in_flight == 4
    assert kinds(backend) == ALL_CALLS


async def test_native_n_changes_nothing() -> None:
    backend = scripted(Model(), capabilities=Capabilities(native_n=True))
    response = await chat(backend, RSTAR)
    assert answer(response) == FINAL
    assert kinds(backend) == ALL_CALLS
    assert {c.n for c in backend.calls} == {1}


async def test_streams_the_rollouts_checks_and_choice_then_the_answer() -> None:
    backend = scripted(Model())
    response = await chat(backend, RSTAR, stream=True)
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Rollout 1: root: answers 14 (reward 1.00)\n"
        "Rollout 2: root > one_step: answers 10 (reward 0.50)\n"
        "Rollout 3: root > subquestion: answers 10 (reward 0.67)\n"
        "Rollout 4: root > rephrase: answers 10 (reward 0.75)\n"
        "Rollout 5: root > remaining_steps: answer 14 again (reward 0.25)\n"
        "Check 1: answer 14, completed from 1 of 2 lines to 10: disagrees\n"
        "Check 2: answer 10, completed from 1 of 3 lines to 10: agrees\n"
        "Check 3: answer 10, completed from 2 of 4 lines to 10: agrees\n"
        "Check 4: answer 10, completed from 1 of 2 lines to 10: agrees\n"
        "Chosen: trajectory 4 (answer 10, reward 0.75, confirmed)\n"
    )
    assert streamed_text(response.text) == FINAL
    assert [c.stream for c in backend.calls] == [False] * 18 + [True]
    response = await chat(scripted(Model()), RSTAR, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == FINAL


@pytest.mark.parametrize("fail_at", [1, 4, 6, 14, 15, 18, 19])
async def test_a_failed_call_is_an_openai_shaped_503(fail_at: int) -> None:
    backend = scripted(Model(fail_at=fail_at))
    response = await chat(backend, RSTAR)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )
    assert len(backend.calls) <= 19


async def test_a_failed_check_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Model(fail_at=16))
    response = await chat(backend, RSTAR, stream=True)
    assert response.status_code == 200  # the rollouts went out first
    assert "Rollout 5: root > remaining_steps" in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"
    assert "final" not in kinds(backend)


@pytest.mark.parametrize("limit", [1, 4, 7, 14, 18])
async def test_a_budget_below_what_the_search_needs_is_a_400(limit: int) -> None:
    backend = scripted(Model())
    response = await chat(backend, RSTAR, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_search_is_enough() -> None:
    response = await chat(scripted(Model()), RSTAR, ponder={"max_backend_calls": 19})
    assert answer(response) == FINAL


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Model())
    response = await chat(backend, MODEL, optillm_approach="rstar")
    assert answer(response) == FINAL
    assert response.headers["x-ponder-backend-calls"] == "19"


async def test_request_n_runs_independent_searches() -> None:
    backend = scripted(Model())
    response = await chat(backend, RSTAR, n=2)
    assert [c["message"]["content"] for c in response.json()["choices"]] == [FINAL] * 2
    assert len(backend.calls) == 38


def node(answer: str, value: float, visits: int = 1) -> Node:
    steps = (Step("remaining_steps", f"The answer is {answer}."),)
    return Node("remaining_steps", steps, None, 1, answer=answer, visits=visits, value=value)


def test_choice_rules_and_helpers() -> None:
    a, b, c = node("10", 0.5), node("12", 0.5), node("12", 0.25)
    # equal rewards: the answer more trajectories give wins, then the earlier
    assert choose([a, b, c], [True, True, True]) == 1
    assert choose([a, b], [True, True]) == 0
    # only the confirmed ones compete, unless none is
    assert choose([a, b, c], [False, False, True]) == 2
    assert choose([c, a], [False, False]) == 1
    assert states_answer("So the answer is 4.")
    assert states_answer("Final answer: 4")
    assert states_answer("\\boxed{4}")
    assert states_answer("#### 4")
    assert not states_answer("Sub-answer: 12 apples.")
    steps = (Step("one_step", "a"), Step("remaining_steps", "b\nc\n\nd"))
    assert prefix_lines(steps) == ("Step 1: a\nStep 2: b", 2, 4)
    assert prefix_lines(steps[:1]) == ("", 0, 1)
    assert uct(node("1", 0.0, visits=0), 3, 1.4) == float("inf")
    assert uct(node("1", 1.0, visits=2), 4, 2.0) == pytest.approx(0.5 + 2.0 * (0.6931**0.5), 1e-3)
