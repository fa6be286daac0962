"""`spl`: classification, selection and prompt assembly in inference mode (learning is in
test_spl_learning.py)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ponder.config import Settings
from ponder.errors import NotFound, PonderError
from ponder.spl.classify import CLASSIFY_PROMPT, classification_messages, parse_type, type_list
from ponder.spl.learn import JUDGE_PROMPT, MERGE_PROMPT, REFINE_PROMPT, WRITE_PROMPT
from ponder.spl.select import select, with_strategies
from ponder.spl.starter import parse_starter, starter_drafts
from ponder.spl_store import FALLBACK_TYPE, PROBLEM_TYPES, Draft, Lifecycle, Store, StrategyRecord
from ponder.testing import Call, ScriptedBackend
from ponder.tokens import count_tokens
from ponder.types import Message
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

SPL = f"spl-{MODEL}"
TENANT = "default"
QUESTION = "What is 17 * 23 + 4?"
ANSWER = "17 * 23 = 391, plus 4 is 395. The answer is 395."
STRATEGY = (
    "1. Write the calculation as one expression.\n2. Multiply before adding.\n3. Check the result."
)
NOTES = "1. Keep units with every number.\n2. Estimate first."


def kind_of(prompt: str) -> str:
    """Which of spl's calls a prompt belongs to."""
    for kind, template in [
        ("classify", CLASSIFY_PROMPT),
        ("judge", JUDGE_PROMPT),
        ("write", WRITE_PROMPT),
        ("merge", MERGE_PROMPT),
        ("refine", REFINE_PROMPT),
    ]:
        if prompt.startswith(template.split("{")[0]):
            return kind
    return "answer"


@dataclass
class Script:
    """The model's part: a reply for each kind of call, every reply given kept for usage."""

    problem_type: str = "arithmetic"
    answer: str = ANSWER
    verdict: str | PonderError = "YES"
    written: str = "1. Read the problem twice.\n2. Name every quantity.\n3. Solve it step by step."
    merged: str = "1. Name every quantity and write one expression.\n2. Evaluate it carefully."
    refined: str = "1. Multiply before adding.\n2. Recompute the product digit by digit."
    on_call: Callable[[str], None] | None = None
    """Called with the kind of each call before it is answered (to change the store midway)."""
    given: list[str] = field(default_factory=list)

    def __call__(self, call: Call, index: int) -> str | PonderError:
        kind = kind_of(call.prompt)
        if self.on_call is not None and index == 0:
            self.on_call(kind)
        reply = {
            "classify": self.problem_type,
            "judge": self.verdict,
            "write": self.written,
            "merge": self.merged,
            "refine": self.refined,
            "answer": self.answer if index == 0 else f"{self.answer} ({index})",
        }[kind]
        if isinstance(reply, str):
            self.given.append(reply)
        return reply


def kinds(backend: ScriptedBackend) -> list[str]:
    return [kind_of(c.prompt) for c in backend.calls]


def answer_call(backend: ScriptedBackend) -> Call:
    (call,) = [c for c in backend.calls if kind_of(c.prompt) == "answer"]
    return call


def seed(store: Store, *drafts: Draft, tenant: str = TENANT) -> list[StrategyRecord]:
    """Give the tenant exactly `drafts` (instead of the starter set)."""
    store.seed(tenant, drafts)
    return store.strategies(tenant)


def record(
    sid: int, text: str, attempts: int = 0, successes: int = 0, status: str = "active"
) -> StrategyRecord:
    now = dt.datetime.now(dt.UTC)
    return StrategyRecord(
        sid,
        TENANT,
        "arithmetic",
        text,
        status,
        "learned",
        1,
        attempts,
        successes,
        now,
        now,  # type: ignore[arg-type]
    )


def reference(problem_type: str, *texts: str) -> str:
    items = "\n\n".join(f"Strategy {i}:\n{t}" for i, t in enumerate(texts, 1))
    return (
        f"### Reference: problem-solving strategies (problem type: {problem_type})\n"
        "These notes worked on similar problems. Use them where they help; "
        "any other instructions take precedence.\n"
        f"{items}\n"
        "### End of reference"
    )


# ---- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("arithmetic", "arithmetic"),
        ("  ALGEBRA\n", "algebra"),
        ("Word problem", "word_problem"),
        ("word-problem.", "word_problem"),
        ("Type: probability statistics", "probability_statistics"),
        ("**algorithm_design**", "algorithm_design"),
        ("It is logic, not algebra", "logic"),
        ("logical reasoning", FALLBACK_TYPE),
        ("decoding", FALLBACK_TYPE),
        ("I am not sure", FALLBACK_TYPE),
        ("", FALLBACK_TYPE),
        (None, FALLBACK_TYPE),
    ],
)
def test_parse_type_takes_the_first_known_name(reply: str | None, expected: str) -> None:
    assert parse_type(reply) == expected


async def test_classification_is_one_cheap_call_listing_every_type(store: Store) -> None:
    seed(store)
    script = Script(problem_type="Arithmetic.")
    backend = scripted(script)
    body = {"messages": conversation("Be brief.", QUESTION), "temperature": 0.9, "seed": 7}
    response = await chat(backend, SPL, store=store, ponder={"trace": True}, **body)
    assert response.status_code == 200
    classify = backend.calls[0]
    assert classify.messages == tuple(classification_messages(QUESTION))
    assert classify.messages == (
        Message("user", CLASSIFY_PROMPT.format(types=type_list(), query=QUESTION)),
    )
    for name, description in PROBLEM_TYPES.items():
        assert f"- {name}: {description}\n" in classify.prompt + "\n"
    assert classify.prompt.endswith(f"Reply with the type name only.\n\nProblem:\n{QUESTION}")
    assert (classify.sampling.temperature, classify.sampling.max_tokens) == (0.0, 16)
    assert classify.sampling.seed == 7
    assert answer_call(backend).sampling.temperature == 0.9
    (step,) = trace_steps(response.json(), "spl_classify")
    assert (step["problem_type"], step["cached"]) == ("arithmetic", False)
    assert store.cached_type(TENANT, QUESTION) == "arithmetic"


async def test_an_identical_query_is_classified_once(store: Store) -> None:
    seed(store)
    backend = scripted(Script(problem_type="geometry"))
    first = await chat(backend, SPL, store=store, messages=[user(QUESTION)])
    second = await chat(
        backend, SPL, store=store, messages=[user(f"  {QUESTION.upper()} ")], ponder={"trace": True}
    )
    assert first.status_code == second.status_code == 200
    assert kinds(backend) == ["classify", "answer", "answer"]
    step = trace_steps(second.json(), "spl_classify")[0]
    assert (step["problem_type"], step["cached"]) == ("geometry", True)


async def test_an_unknown_reply_classifies_as_general(store: Store) -> None:
    seed(store, Draft("general", NOTES, status="active"))
    backend = scripted(Script(problem_type="no idea"))
    response = await chat(backend, SPL, store=store, messages=[user(QUESTION)])
    assert response.status_code == 200
    assert store.cached_type(TENANT, QUESTION) == FALLBACK_TYPE
    assert answer_call(backend).messages[0] == Message("system", reference("general", NOTES))


# ---- selection ------------------------------------------------------------------------------


def test_relevance_outweighs_an_equal_record_and_success_rate_breaks_even_relevance() -> None:
    relevant = record(1, "multiply the two numbers then add the remainder")
    unrelated = record(2, "draw a diagram of the shape")
    picked = select("multiply two numbers and add", [unrelated, relevant], 3, learning=False)
    assert [r.strategy.id for r in picked] == [1, 2]
    assert picked[0].relevance > picked[1].relevance == 0.0

    proven = record(3, "draw a diagram of the shape", attempts=10, successes=10)
    failing = record(4, "draw a picture of the shape", attempts=10, successes=0)
    picked = select("multiply two numbers", [failing, proven], 3, learning=False)
    assert [r.strategy.id for r in picked] == [3, 4]
    assert picked[0].score == pytest.approx(0.4 * 11 / 12)


def test_a_strong_record_can_beat_a_more_relevant_text() -> None:
    query = "add the numbers carefully"
    close = record(1, "add the numbers carefully", attempts=10, successes=0)
    proven = record(2, "add carefully", attempts=10, successes=10)
    picked = select(query, [close, proven], 3, learning=False)
    assert [r.strategy.id for r in picked] == [2, 1]
    assert picked[1].relevance > picked[0].relevance > 0


def test_ties_go_to_the_lower_id_and_max_strategies_limits() -> None:
    same = [record(i, "check the answer") for i in (5, 3, 4)]
    assert [r.strategy.id for r in select("unrelated", same, 3, learning=False)] == [3, 4, 5]
    assert [r.strategy.id for r in select("unrelated", same, 2, learning=False)] == [3, 4]
    assert select("unrelated", same, 0, learning=False) == []


def test_candidates_only_in_learning_mode_and_then_the_least_tried_one() -> None:
    active = [record(i, f"active strategy number {i}", attempts=4, successes=3) for i in (1, 2, 3)]
    tried = record(4, "candidate strategy tried", attempts=2, successes=2, status="candidate")
    fresh = record(5, "candidate strategy fresh", attempts=0, status="candidate")
    pool = [*active, tried, fresh]
    assert [r.strategy.id for r in select("q", pool, 3, learning=False)] == [1, 2, 3]
    learning = [r.strategy.id for r in select("q", pool, 3, learning=True)]
    assert sorted(learning) == [1, 2, 5]
    assert [r.strategy.id for r in select("q", pool, 1, learning=True)] == [5]
    assert [r.strategy.id for r in select("q", [tried], 3, learning=False)] == []


# ---- prompt assembly ------------------------------------------------------------------------


def test_the_reference_block_follows_the_client_system_prompt_verbatim() -> None:
    messages = [Message("system", "  Be brief.\n"), Message("user", QUESTION)]
    assert with_strategies(messages, "arithmetic", [STRATEGY, NOTES]) == [
        Message("system", "  Be brief.\n\n\n" + reference("arithmetic", STRATEGY, NOTES)),
        Message("user", QUESTION),
    ]
    assert reference("arithmetic", STRATEGY) == (
        "### Reference: problem-solving strategies (problem type: arithmetic)\n"
        "These notes worked on similar problems. Use them where they help; any other "
        "instructions take precedence.\n"
        "Strategy 1:\n"
        "1. Write the calculation as one expression.\n"
        "2. Multiply before adding.\n"
        "3. Check the result.\n"
        "### End of reference"
    )


async def test_strategies_reach_the_answer_call_after_the_system_prompt(store: Store) -> None:
    seed(
        store,
        Draft("arithmetic", STRATEGY, status="active"),
        Draft("arithmetic", "1. Something else entirely.\n2. Then stop.", status="retired"),
        Draft("arithmetic", NOTES, status="candidate"),
        Draft("geometry", "1. Draw the shape.\n2. Label it.", status="active"),
    )
    backend = scripted(Script())
    messages = conversation("Answer in one line.", "Hi", "Hello!", QUESTION)
    response = await chat(backend, SPL, store=store, messages=messages)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert answer_call(backend).messages == (
        Message("system", "Answer in one line.\n\n" + reference("arithmetic", STRATEGY)),
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
        Message("user", QUESTION),
    )


async def test_without_a_system_prompt_the_block_is_the_system_prompt(store: Store) -> None:
    seed(store, Draft("arithmetic", STRATEGY, status="active"))
    backend = scripted(Script())
    await chat(backend, SPL, store=store, messages=[user(QUESTION)])
    assert answer_call(backend).messages == (
        Message("system", reference("arithmetic", STRATEGY)),
        Message("user", QUESTION),
    )


async def test_with_nothing_selected_the_messages_go_unchanged(store: Store) -> None:
    seed(store, Draft("geometry", "1. Draw the shape.\n2. Label it.", status="active"))
    backend = scripted(Script())
    messages = conversation("Answer in one line.", QUESTION)
    await chat(backend, SPL, store=store, messages=messages)
    assert answer_call(backend).messages == (
        Message("system", "Answer in one line."),
        Message("user", QUESTION),
    )
    backend = scripted(Script())
    store.add_strategy(TENANT, Draft("arithmetic", STRATEGY, status="active"))
    await chat(backend, SPL, store=store, messages=messages, ponder={"spl": {"max_strategies": 0}})
    assert answer_call(backend).messages == (
        Message("system", "Answer in one line."),
        Message("user", QUESTION),
    )


# ---- inference mode -------------------------------------------------------------------------


def snapshot(store: Store) -> tuple[Any, ...]:
    return (store.strategies(TENANT), store.events(TENANT), store.tenant(TENANT))


async def test_inference_mode_makes_two_calls_then_one_and_writes_only_the_cache(
    store: Store,
) -> None:
    (s,) = seed(store, Draft("arithmetic", STRATEGY, status="active"))
    before = snapshot(store)
    script = Script()
    backend = scripted(script)
    first = await chat(backend, SPL, store=store, messages=[user(QUESTION)], ponder={"trace": True})
    assert kinds(backend) == ["classify", "answer"]
    assert first.json()["usage"] == usage_for(backend, script.given)
    assert first.headers["x-ponder-backend-calls"] == "2"
    select_step = trace_steps(first.json(), "spl_select")[0]
    assert (select_step["ids"], select_step["learning"]) == ([s.id], False)

    backend = scripted(script := Script())
    second = await chat(backend, SPL, store=store, messages=[user(QUESTION)])
    assert kinds(backend) == ["answer"]
    assert second.json()["usage"] == usage_for(backend, script.given)

    assert snapshot(store) == before
    assert store.examples(TENANT, s.id) == []
    assert store.cached_type(TENANT, QUESTION) == "arithmetic"
    with pytest.raises(NotFound):
        store.request_outcome(TENANT, first.headers["x-request-id"])


async def test_a_tenant_is_seeded_with_the_starter_set_once(store: Store) -> None:
    backend = scripted(Script())
    await chat(backend, SPL, store=store, messages=[user(QUESTION)])
    seeded = store.strategies(TENANT)
    assert sorted((s.problem_type, s.text) for s in seeded) == sorted(
        (d.problem_type, d.text) for d in starter_drafts()
    )
    assert {(s.status, s.origin, s.version) for s in seeded} == {("active", "starter", 1)}
    assert store.tenant(TENANT).seeded
    arithmetic = [s.text for s in seeded if s.problem_type == "arithmetic"]
    assert (
        answer_call(backend)
        .messages[0]
        .text.startswith("### Reference: problem-solving strategies (problem type: arithmetic)")
    )
    assert all(text in answer_call(backend).messages[0].text for text in arithmetic)
    await chat(scripted(Script()), SPL, store=store, messages=[user("Another one: 2 + 2?")])
    assert store.strategies(TENANT) == seeded


def test_the_starter_set_covers_every_type_with_short_strategies() -> None:
    drafts = starter_drafts()
    assert 20 <= len(drafts) <= 30
    per_type = {t: [d for d in drafts if d.problem_type == t] for t in PROBLEM_TYPES}
    assert all(1 <= len(ds) <= 2 for ds in per_type.values()), per_type
    for d in drafts:
        steps = re.findall(r"^\d+\. ", d.text, flags=re.MULTILINE)
        assert 2 <= len(steps) <= 6, d.text
        assert d.status == "active" and len(d.text) < 600
    assert len({d.text for d in drafts}) == len(drafts)
    assert parse_starter("arithmetic:\n  - |\n    1. a\n    2. b\n") == (
        Draft("arithmetic", "1. a\n2. b", status="active"),
    )
    with pytest.raises(ValueError, match="unknown problem type"):
        parse_starter("cooking:\n  - stir\n")


# ---- errors, streaming, n -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"learn": True}, "ponder.spl.learn"),
        ({"answer": "395"}, "ponder.spl.answer"),
        ({"answer": "395", "learn": False}, "ponder.spl.answer"),
    ],
)
async def test_learning_options_the_client_may_not_use_are_refused(
    store: Store, options: dict[str, Any], param: str
) -> None:
    backend = scripted(Script())
    response = await chat(backend, SPL, store=store, ponder={"spl": options})
    assert_error(response, 403, type="permission_error", code="permission_denied", param=param)
    assert backend.calls == []
    assert store.strategies(TENANT) == []


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"max_strategies": 11}, "ponder.spl.max_strategies"),
        ({"max_strategies": -1}, "ponder.spl.max_strategies"),
        ({"refine_after": 2}, "ponder.spl.refine_after"),
    ],
)
async def test_bad_options_are_400(store: Store, options: dict[str, Any], param: str) -> None:
    backend = scripted(Script())
    response = await chat(backend, SPL, store=store, ponder={"spl": options})
    assert_error(response, 400, type="invalid_request_error", param=param)
    assert backend.calls == []


async def test_streaming_sends_the_reasoning_line_then_the_answer(store: Store) -> None:
    (s,) = seed(store, Draft("arithmetic", STRATEGY, status="active"))
    backend = scripted(Script())
    response = await chat(backend, SPL, store=store, messages=[user(QUESTION)], stream=True)
    assert response.status_code == 200
    raw = response.text
    sse_events(raw)  # well formed, ends with [DONE]
    assert streamed_text(raw, "reasoning_content") == (
        f"Problem type: arithmetic. Strategies used: #{s.id}.\n"
    )
    assert streamed_text(raw) == ANSWER
    assert [c.stream for c in backend.calls] == [False, True]
    first_reasoning = raw.index("reasoning_content")
    assert first_reasoning < raw.index('"content":"17')


async def test_n_2_gives_two_choices_from_one_answer_call_and_one_classification(
    store: Store,
) -> None:
    seed(store, Draft("arithmetic", STRATEGY, status="active"))
    script = Script()
    backend = scripted(script)
    response = await chat(backend, SPL, store=store, messages=[user(QUESTION)], n=2)
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == [ANSWER, f"{ANSWER} (1)"]
    assert kinds(backend) == ["classify", "answer"]
    assert [c.n for c in backend.calls] == [1, 2]
    # both choices come from the one answer call: only the classification is reasoning
    chosen = [ANSWER, f"{ANSWER} (1)"]
    expected = usage_for(backend, script.given, answer="")  # all replies, less the choices:
    expected["completion_tokens_details"]["reasoning_tokens"] -= sum(map(count_tokens, chosen))
    assert body["usage"] == expected


# ---- tenants --------------------------------------------------------------------------------


async def test_a_tenant_never_sees_another_tenants_strategies(tmp_path: Path) -> None:
    # no control arm: a request drawn into it would learn from an unaided answer
    store = Store(f"sqlite:///{tmp_path}/tenants.db", Lifecycle(explore=0.0))
    settings = Settings(api_keys=["alice:key-a", "bob:key-b"])  # type: ignore[list-item]
    secret = "1. Alice's secret method: multiply by seven.\n2. Then add the magic number."
    store.seed("alice", [Draft("arithmetic", secret, status="active")])
    store.seed("bob", [Draft("arithmetic", STRATEGY, status="active")])
    store.configure_tenant("bob", learning=True)

    alice = scripted(Script())
    a = await chat(
        alice,
        SPL,
        store=store,
        settings=settings,
        headers={"Authorization": "Bearer key-a"},
        messages=[user(QUESTION)],
    )
    assert a.status_code == 200
    assert secret in answer_call(alice).messages[0].text

    bob = scripted(Script(verdict="NO"))
    b = await chat(
        bob,
        SPL,
        store=store,
        settings=settings,
        headers={"Authorization": "Bearer key-b"},
        messages=[user(QUESTION)],
    )
    assert b.status_code == 200
    assert kinds(bob) == ["classify", "answer", "judge"]  # alice's cache is not bob's
    for call in bob.calls:
        assert all("Alice" not in m.text for m in call.messages)
    assert STRATEGY in answer_call(bob).messages[0].text
    assert [s.text for s in store.strategies("alice")] == [secret]
    assert store.strategies("alice")[0].attempts == 0
    assert [s.attempts for s in store.strategies("bob")] == [1]
    store.close()
