"""`mcts`: Monte Carlo tree search over dialogue states, rollouts rated by the model."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.mcts import (
    REPLY_INTRO,
    REVISE_PROMPT,
    VALUE_PROMPT,
    Node,
    best_child,
    uct,
)
from ponder.strategies.showing import CUT_OFF_NOTE
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    logprobs_asked,
    rated_eight,
    scripted,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

MCTS = f"mcts-{MODEL}"
LETTERS = "abcdefghijklmnop"
CONVERSATION = conversation(
    "Answer briefly.",
    "I have a puzzle for you.",
    "Go ahead.",
    "Tom has 3 boxes of 4 apples and eats 2. How many are left?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]


def kind(call: Call) -> str:
    return "rate" if call.prompt.endswith(VALUE_PROMPT) else "reply"


def shown(call: Call, prompt: str) -> str:
    """The label of the reply a rating or revision call shows (a cut-off mark dropped)."""
    reply = call.prompt.split(f"{REPLY_INTRO}\n\n")[1].split(f"\n\n{prompt}")[0]
    return label_of(reply.removeprefix(f"{CUT_OFF_NOTE}\n\n"))


def text(label: str) -> str:
    return f"Answer {label}."


def label_of(reply_text: str) -> str:
    return reply_text.removeprefix("Answer ").removesuffix(".")


class Dialogue:
    """A scripted model for mcts. A reply is named after the reply it revises: the replies to
    the client's conversation are "a", "b", "c", ...; the revisions of reply "b" are "ba",
    "bb", ... in the order the calls arrive, so a new node's rollout takes the first letter
    under it. The rating of reply `x` comes from
    `scores` (5 when not listed); a reply named in `cut` stops at the token limit; the reply
    or rating of the label `fail` fails."""

    def __init__(
        self,
        scores: dict[str, int | str] | None = None,
        *,
        cut: frozenset[str] = frozenset(),
        fail: tuple[str, str] | None = None,
    ) -> None:
        self.scores = scores or {}
        self.cut = cut
        self.fail = fail
        self.count: dict[str, int] = {}
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        if kind(call) == "rate":
            label = shown(call, VALUE_PROMPT)
            if self.fail == ("rate", label):
                return BackendUnavailable("down")
            reply = str(self.scores.get(label, 5))
            self.replies.append(reply)
            return reply
        state = shown(call, REVISE_PROMPT) if call.prompt.endswith(REVISE_PROMPT) else ""
        count = self.count.get(state, 0)
        self.count[state] = count + 1
        label = state + LETTERS[count]
        if self.fail == ("reply", label):
            return BackendUnavailable("down")
        self.replies.append(text(label))
        if label in self.cut:
            return Completion(text(label), finish_reason="length")
        return text(label)


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


def answer(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def turns(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


def state(*replies: str) -> list[tuple[str, str]]:
    """The conversation a revision is sampled for, down the path `replies`: the request, then
    the last of them alone (those above it are not shown) and the request for a revision."""
    revised = f"{REQUEST}\n\n{REPLY_INTRO}\n\n{text(replies[-1])}\n\n{REVISE_PROMPT}"
    return [*CLIENT[:-1], ("user", revised)]


def rating_of(reply: str, shown: str | None = None) -> list[tuple[str, str]]:
    body = shown if shown is not None else text(reply)
    return [*CLIENT[:-1], ("user", f"{REQUEST}\n\n{REPLY_INTRO}\n\n{body}\n\n{VALUE_PROMPT}")]


# ---- the search ----------------------------------------------------------------------------


async def test_defaults_make_18_calls_and_return_the_reply_of_the_highest_mean_value() -> None:
    # the rollouts of a, b and c are aa, ba and ca; b's rates best and b is expanded next
    dialogue = Dialogue({"aa": 6, "ba": 9, "ca": 4, "bba": 2, "bca": 3, "bda": 2})
    backend = scripted(dialogue)
    response = await chat(
        backend,
        MCTS,
        messages=CONVERSATION,
        max_tokens=80,
        stop=["END"],
        seed=5,
        ponder={"trace": True},
    )
    assert response.status_code == 200
    body = response.json()
    # b's children rate badly: its mean falls to 0.4, below a's 0.6, though b has 4 visits
    assert answer(response) == text("a")
    assert len(backend.calls) == 18
    assert response.headers["x-ponder-backend-calls"] == "18"
    assert [kind(c) for c in backend.calls] == (["reply"] * 6 + ["rate"] * 3) * 2
    expected = [
        # simulation 1: three replies to the request, a rollout of each, a rating of each
        *[CLIENT] * 3,
        state("a"),
        state("b"),
        state("c"),
        rating_of("aa"),
        rating_of("ba"),
        rating_of("ca"),
        # simulation 2: b is expanded; its children are bb, bc and bd
        *[state("b")] * 3,
        state("b", "bb"),
        state("b", "bc"),
        state("b", "bd"),
        rating_of("bba"),
        rating_of("bca"),
        rating_of("bda"),
    ]
    assert [turns(c) for c in backend.calls] == expected
    for call in calls_of(backend, "reply"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed, call.n) == (0.7, 80, ("END",), 5, 1)
    for call in calls_of(backend, "rate"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 8, (), 5)
    assert body["usage"] == usage_for(backend, dialogue.replies, answer=text("a"))
    first, second = trace_steps(body, "simulation")
    assert first == {
        "step": "simulation",
        "at_s": first["at_s"],
        "simulation": 1,
        "expanded": [],
        "replies": [text("a"), text("b"), text("c")],
        "rollouts": [[text("aa")], [text("ba")], [text("ca")]],
        "values": [0.6, 0.9, 0.4],
    }
    assert (second["expanded"], second["values"]) == ([2], [0.2, 0.3, 0.2])
    (choice,) = trace_steps(body, "choice")
    assert choice["visits"] == [1, 4, 1]
    assert choice["values"] == pytest.approx([0.6, (0.9 + 0.2 + 0.3 + 0.2) / 4, 0.4])
    assert choice["chosen"] == 1


async def test_a_third_simulation_can_change_the_answer() -> None:
    # b's children rate 0.2: its mean falls to 0.375 and a (0.6) is expanded; a's children
    # rate 0.8, so a and b both have 4 visits and a's mean value, 0.75, wins
    scores: dict[str, int | str] = {"aa": 6, "ba": 9, "ca": 5}
    scores |= {x: 2 for x in ("bba", "bca", "bda")} | {x: 8 for x in ("aba", "aca", "ada")}
    backend = scripted(Dialogue(scores))
    response = await chat(backend, MCTS, ponder={"mcts": {"simulations": 3}, "trace": True})
    assert answer(response) == text("a")
    assert len(backend.calls) == 27
    body = response.json()
    assert [s["expanded"] for s in trace_steps(body, "simulation")] == [[], [2], [1]]
    (choice,) = trace_steps(body, "choice")
    assert choice["visits"] == [4, 4, 1]
    assert choice["values"] == pytest.approx([0.75, 0.375, 0.5])
    assert choice["chosen"] == 1


@pytest.mark.parametrize(
    ("exploration", "expanded", "prompt", "chosen"),
    [
        # 0.9 + 0.2 * sqrt(ln 6 / 4) = 1.034 < 0.8 + 0.2 * sqrt(ln 6) = 1.068: c is explored,
        # its children rate 0.5 (c's mean 0.575) and b (0.9) is the answer
        (0.2, [3], state("c"), "b"),
        # without exploration b (0.9) stays ahead; its children tie and the first, bb, is
        # expanded; bb's children rate 0.5, b's mean falls to 0.73 and c (0.8) is the answer
        (0.0, [2, 1], state("b", "bb"), "c"),
    ],
)
async def test_exploration_weighs_the_less_visited_replies(
    exploration: float, expanded: list[int], prompt: list[tuple[str, str]], chosen: str
) -> None:
    scores: dict[str, int | str] = {"aa": 5, "ba": 9, "ca": 8, "bba": 9, "bca": 9, "bda": 9}
    backend = scripted(Dialogue(scores))
    options = {"simulations": 3, "exploration": exploration}
    response = await chat(
        backend, MCTS, messages=CONVERSATION, ponder={"mcts": options, "trace": True}
    )
    assert trace_steps(response.json(), "simulation")[2]["expanded"] == expanded
    assert [turns(c) for c in backend.calls[18:21]] == [prompt] * 3
    assert answer(response) == text(chosen)


def test_uct_scores_and_the_final_choice() -> None:
    assert uct(Node(), 3, 0.2) == math.inf
    assert uct(Node(visits=2, value=1.2), 6, 0.5) == pytest.approx(
        0.6 + 0.5 * math.sqrt(math.log(6) / 2)
    )
    assert uct(Node(visits=1, value=0.4), 1, 3.0) == pytest.approx(0.4)
    root = Node()
    for visits, value in ((1, 0.7), (3, 1.5), (3, 2.1), (3, 2.1), (4, 1.6)):
        root.children.append(Node(visits=visits, value=value, path=(len(root.children) + 1,)))
    assert best_child(root).path == (3,)  # the higher mean, then more visits, then the earlier


async def test_selection_descends_to_a_leaf_before_expanding() -> None:
    # one reply per expansion: the root's only child is expanded, then its only child
    backend = scripted(Dialogue({"aa": 10}))
    response = await chat(
        backend, MCTS, ponder={"mcts": {"actions": 1, "simulations": 3}, "trace": True}
    )
    assert [s["expanded"] for s in trace_steps(response.json(), "simulation")] == [
        [],
        [1],
        [1, 1],
    ]
    assert answer(response) == text("a")
    assert len(backend.calls) == 9


@pytest.mark.parametrize(
    ("options", "calls"),
    [
        ({"depth": 0}, 2 * 3 * 2),
        ({"depth": 2}, 2 * 3 * 4),
        ({"simulations": 1, "actions": 2}, 1 * 2 * 3),
        ({"simulations": 4, "actions": 1, "depth": 3}, 4 * 1 * 5),
    ],
)
async def test_call_count_follows_simulations_actions_and_depth(
    options: dict[str, int], calls: int
) -> None:
    dialogue = Dialogue()
    backend = scripted(dialogue)
    response = await chat(backend, MCTS, ponder={"mcts": options})
    assert response.status_code == 200
    assert len(backend.calls) == calls
    assert response.headers["x-ponder-backend-calls"] == str(calls)
    # every rating is 5: the replies tie, and the earliest, a, is the answer
    assert response.json()["usage"] == usage_for(backend, dialogue.replies, answer=text("a"))


async def test_depth_0_rates_the_new_replies_and_depth_2_rolls_two_turns() -> None:
    backend = scripted(Dialogue({"b": 7}))
    response = await chat(
        backend, MCTS, messages=CONVERSATION, ponder={"mcts": {"depth": 0, "simulations": 1}}
    )
    assert [turns(c) for c in backend.calls[3:]] == [rating_of(x) for x in "abc"]
    assert answer(response) == text("b")

    backend = scripted(Dialogue({"caa": 9}))
    response = await chat(
        backend, MCTS, messages=CONVERSATION, ponder={"mcts": {"depth": 2, "simulations": 1}}
    )
    assert [turns(c) for c in backend.calls[3:]] == [
        state("a"),
        state("b"),
        state("c"),
        state("a", "aa"),
        state("b", "ba"),
        state("c", "ca"),
        *[rating_of(x) for x in ("aaa", "baa", "caa")],
    ]
    assert answer(response) == text("c")


async def test_ratings_are_read_clamped_and_unreadable_ones_count_as_0() -> None:
    scores: dict[str, int | str] = {"aa": "7/10", "ba": "Rating: 12", "ca": "9"}
    response = await chat(
        scripted(Dialogue(scores)), MCTS, ponder={"mcts": {"simulations": 1}, "trace": True}
    )
    assert trace_steps(response.json(), "simulation")[0]["values"] == [0.7, 1.0, 0.9]
    assert answer(response) == text("b")
    scores = {"aa": "no idea", "ba": "I cannot rate this", "ca": ""}
    response = await chat(
        scripted(Dialogue(scores)), MCTS, ponder={"mcts": {"simulations": 1}, "trace": True}
    )
    assert trace_steps(response.json(), "simulation")[0]["values"] == [0.0, 0.0, 0.0]
    assert answer(response) == text("a")  # a tie goes to the earlier reply


async def test_a_reply_cut_off_at_the_token_limit_is_rated_as_such() -> None:
    backend = scripted(Dialogue(cut=frozenset({"b"})))
    await chat(
        backend, MCTS, messages=CONVERSATION, ponder={"mcts": {"depth": 0, "simulations": 1}}
    )
    assert turns(calls_of(backend, "rate")[1]) == rating_of("b", f"{CUT_OFF_NOTE}\n\n{text('b')}")


async def test_a_revision_is_asked_for_in_the_request_turn_with_the_cut_off_marked() -> None:
    # The reply to revise goes after the request, in the client's last user turn: the model
    # is never asked about "my request before it" in a turn of its own.
    backend = scripted(Dialogue(cut=frozenset({"b"})))
    await chat(backend, MCTS, messages=CONVERSATION, ponder={"mcts": {"simulations": 1}})
    revisions = [c for c in calls_of(backend, "reply") if c.prompt.endswith(REVISE_PROMPT)]
    cut_b = f"{REQUEST}\n\n{REPLY_INTRO}\n\n{CUT_OFF_NOTE}\n\n{text('b')}\n\n{REVISE_PROMPT}"
    assert [turns(c) for c in revisions] == [
        state("a"),
        [*CLIENT[:-1], ("user", cut_b)],
        state("c"),
    ]
    assert {len(c.messages) for c in backend.calls} == {len(CLIENT)}


async def test_native_n_samples_each_expansion_in_one_call() -> None:
    dialogue = Dialogue({"ba": 9})
    backend = scripted(dialogue, capabilities=Capabilities(native_n=True))
    response = await chat(backend, MCTS)
    assert answer(response) == text("b")
    # per simulation: 1 expansion (n=3), 3 rollouts, 3 ratings
    assert [c.n for c in backend.calls] == ([3] + [1] * 6) * 2
    assert response.headers["x-ponder-backend-calls"] == "14"
    assert response.json()["usage"] == usage_for(backend, dialogue.replies, answer=text("b"))


async def test_each_stage_runs_its_calls_at_once() -> None:
    backend = scripted(Dialogue({"ba": 9}))
    backend.hold()
    request = asyncio.create_task(chat(backend, MCTS))
    made = 0
    for stage in ["reply", "reply", "rate"] * 2:
        made += 3
        async with asyncio.timeout(5):
            while len(backend.calls) < made or backend.in_flight < 3:  # noqa: ASYNC110
                await asyncio.sleep(0)
        # the whole stage waits at the gate together, and nothing of the next has started
        assert [kind(c) for c in backend.calls[-3:]] == [stage] * 3
        assert (len(backend.calls), backend.in_flight) == (made, 3)
        backend.release()
        backend.hold()
    backend.release()
    response = await request
    assert answer(response) == text("b")
    assert backend.max_in_flight == 3
    assert len(backend.calls) == 18


async def test_a_client_temperature_drives_the_replies_not_the_ratings() -> None:
    backend = scripted(Dialogue())
    await chat(backend, MCTS, temperature=1.1, ponder={"mcts": {"temperature": 0.3}})
    assert {c.sampling.temperature for c in calls_of(backend, "reply")} == {1.1}
    assert {c.sampling.temperature for c in calls_of(backend, "rate")} == {0.0}
    backend = scripted(Dialogue())
    await chat(
        backend, MCTS, temperature=0, ponder={"mcts": {"temperature": 0.3, "value_tokens": 3}}
    )
    assert {c.sampling.temperature for c in calls_of(backend, "reply")} == {0.3}
    assert {c.sampling.max_tokens for c in calls_of(backend, "rate")} == {3}


@pytest.mark.parametrize("confidence", [True, False])
async def test_where_the_backend_has_logprobs_a_rating_is_its_expected_score(
    confidence: bool,
) -> None:
    """Every rollout is rated "8"; the model is surest of c's. With logprobs read, c has the
    highest mean value and is returned; with `confidence` off, the tie goes to the earlier a
    and nothing asks for logprobs."""
    sureness = {"aa": 0.6, "ba": 0.7, "ca": 0.95}
    dialogue = Dialogue()

    def reply(call: Call, index: int) -> Reply:
        if kind(call) == "rate":  # logprobs only when asked, as a backend gives them
            sure = sureness[shown(call, VALUE_PROMPT)]
            return rated_eight(call, sure)
        return dialogue(call, index)

    backend = scripted(reply, capabilities=Capabilities(logprobs=True))
    options = {"simulations": 1, "confidence": confidence}
    response = await chat(backend, MCTS, ponder={"mcts": options, "trace": True})
    (simulation,) = trace_steps(response.json(), "simulation")
    rates = calls_of(backend, "rate")
    assert len(rates) == 3
    if confidence:
        expected = [(p * 8 + (1 - p) * 2) / 10 for p in (0.6, 0.7, 0.95)]
        assert simulation["values"] == pytest.approx(expected)
        assert logprobs_asked(rates) == {(True, 10)}
        assert answer(response) == text("c")
    else:
        assert simulation["values"] == [0.8, 0.8, 0.8]
        assert logprobs_asked(rates) == {(False, None)}
        assert answer(response) == text("a")
    # replies and rollouts never ask for logprobs the client did not
    assert not any(c.sampling.logprobs for c in calls_of(backend, "reply"))


async def test_a_backend_without_logprobs_is_not_asked_for_them() -> None:
    backend = scripted(Dialogue({"ba": 9}))
    response = await chat(backend, MCTS)
    assert answer(response) == text("b")
    assert not any(c.sampling.logprobs for c in backend.calls)


# ---- streaming, failures, budget, options ----------------------------------------------------


async def test_streams_the_search_as_reasoning_then_the_chosen_reply() -> None:
    scores: dict[str, int | str] = {"aa": 6, "ba": 9, "ca": 4, "bba": 2, "bca": 3, "bda": 2}
    backend = scripted(Dialogue(scores))
    response = await chat(backend, MCTS, stream=True)
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Simulation 1: expanding the request\n"
        "Reply 1: Answer a. (value 0.60)\n"
        "Reply 2: Answer b. (value 0.90)\n"
        "Reply 3: Answer c. (value 0.40)\n"
        "Simulation 2: expanding reply 2\n"
        "Reply 2.1: Answer bb. (value 0.20)\n"
        "Reply 2.2: Answer bc. (value 0.30)\n"
        "Reply 2.3: Answer bd. (value 0.20)\n"
        "Chosen reply 1: 1 visits, mean value 0.60\n"
    )
    assert streamed_text(response.text) == text("a")
    assert not any(c.stream for c in backend.calls)  # the answer is a reply already written
    response = await chat(
        scripted(Dialogue(scores)), MCTS, stream=True, ponder={"reasoning": False}
    )
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == text("a")


@pytest.mark.parametrize(
    "failing",
    [("reply", "b"), ("reply", "ca"), ("rate", "ba"), ("reply", "bc"), ("rate", "bda")],
)
async def test_a_failed_call_is_an_openai_shaped_503(failing: tuple[str, str]) -> None:
    backend = scripted(Dialogue({"ba": 9}, fail=failing))
    response = await chat(backend, MCTS)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )


async def test_a_failure_in_the_second_simulation_ends_the_stream_with_the_error() -> None:
    backend = scripted(Dialogue({"ba": 9}, fail=("reply", "bca")))
    response = await chat(backend, MCTS, stream=True)
    assert response.status_code == 200  # the first simulation's lines went out first
    assert "Reply 3: Answer c." in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"
    assert not calls_of(backend, "rate")[3:]
    assert "Chosen reply" not in response.text


@pytest.mark.parametrize("limit", [1, 4, 8, 9, 17])
async def test_a_budget_below_what_the_search_needs_is_a_400(limit: int) -> None:
    backend = scripted(Dialogue())
    response = await chat(backend, MCTS, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_search_is_enough() -> None:
    response = await chat(scripted(Dialogue({"ba": 9})), MCTS, ponder={"max_backend_calls": 18})
    assert answer(response) == text("b")


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Dialogue({"ba": 9}))
    response = await chat(backend, MODEL, optillm_approach="mcts")
    assert answer(response) == text("b")
    assert response.headers["x-ponder-backend-calls"] == "18"


async def test_request_n_runs_independent_searches() -> None:
    backend = scripted(Dialogue())
    response = await chat(backend, MCTS, n=2, ponder={"mcts": {"simulations": 1}})
    choices = response.json()["choices"]
    assert len(choices) == 2
    assert len(backend.calls) == 18
    # the searches share the script: between them the request is answered 6 times, a to f,
    # and each search returns one of its own replies
    answers = {label_of(c["message"]["content"]) for c in choices}
    assert len(answers) == 2
    assert answers <= set("abcdef")
