"""Learning from one request: its outcome, then at most one change to the strategies.

1. Outcome, best signal first: the client's ground truth (`answer`), else one judge call
   asking the model whether its answer is correct, else none now (feedback may come later).
   `Store.record_outcome` applies it: counters, examples, promotion and retirement.
2. Evolution, one change per request:
   - a used strategy that keeps failing (the answer was wrong, it has at least `REFINE_AFTER`
     attempts and a success rate below its type's baseline, or below `REFINE_BELOW` with the
     control arm off, and it was not just retired) is refined: one call. Nothing is refined
     while the baseline is still being measured;
   - otherwise, when no strategy was used, or the answer was wrong and the correct answer is
     known, a new strategy is written: one call. When it is as relevant as `MERGE_THRESHOLD`
     to an existing active or candidate strategy of the type, the two are merged instead of
     adding a near-duplicate: a second call. So evolution makes at most two calls.
   A refined or merged text is a new strategy with its own counters (the old text's record
   says nothing about the new one) and a link to its parent, which retires. Edits name the
   version they were based on; if someone changed the strategy meanwhile the edit is dropped
   (traced as `spl_conflict`), never written over theirs.
   A proposal that is not a usable strategy (too short, not prose, one line repeated, about
   this one problem: it states an answer, repeats the problem's numbers or names its people
   and things; or a rewrite that only reformats the old text) is not used; it is kept as a
   "rejected" learning event for the operator to see.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ponder.answers import same_answer
from ponder.errors import Conflict
from ponder.spl.select import strategy_vector
from ponder.spl_store import Draft, Store, StrategyRecord
from ponder.spl_store.decisions import measured
from ponder.strategies.common import helper_sampling
from ponder.strategies.context import RequestContext
from ponder.types import Message
from ponder.vectors import similarities

JUDGE_MAX_TOKENS = 8
EVOLVE_MAX_TOKENS = 200
REFINE_AFTER = 5
"""Attempts a strategy needs before a failure may refine it (fewer is not yet evidence)."""
REFINE_BELOW = 0.5
"""Without a control arm: the success rate under which a failing strategy is refined."""
MERGE_THRESHOLD = 0.5
"""Relevance of a new strategy to an existing one from which the two are merged."""
MAX_STRATEGY_CHARS = 1000
MIN_STRATEGY_CHARS = 20
MIN_DISTINCT_WORDS = 3
MIN_DISTINCT_LINES = 0.7
"""Share of a strategy's lines that must differ from each other."""
REJECTED_PREVIEW = 300
"""Characters of a rejected proposal kept in its learning event."""
PROMPT_TEXT_LIMIT = 2000
"""Characters of a problem or an answer quoted in a learning prompt."""

JUDGE_PROMPT = (
    "Is the proposed answer to the problem below correct? Reply YES or NO only.\n\n"
    "Problem:\n{query}\n\n"
    "Proposed answer:\n{answer}"
)
WRITE_PROMPT = (
    "Write a short, general strategy for solving problems of this type "
    "({problem_type}: {description}), as 2 to 6 numbered steps. Keep it general: no numbers, "
    "names or details specific to this problem.\n\n"
    "Problem:\n{query}{solution}{truth}\n\n"
    "Reply with the steps only."
)
MERGE_PROMPT = (
    "Combine these two strategies for {problem_type} problems into one short, general strategy "
    "of 2 to 6 numbered steps, keeping what is useful in each and dropping repetition.\n\n"
    "Strategy A:\n{existing}\n\n"
    "Strategy B:\n{new}\n\n"
    "Reply with the steps only."
)
REFINE_PROMPT = (
    "The strategy below for {problem_type} problems was followed and the answer was wrong. "
    "Improve the strategy so that it avoids this mistake. Keep it short and general: 2 to 6 "
    "numbered steps, no numbers or details specific to this problem.\n\n"
    "Strategy:\n{strategy}\n\n"
    "Problem:\n{query}\n\n"
    "Wrong answer:\n{answer}{truth}\n\n"
    "Reply with the improved steps only."
)
SOLUTION_SECTION = "\n\nA correct solution:\n{answer}"
TRUTH_SECTION = "\n\nThe correct answer:\n{truth}"

_WORD = re.compile(r"[^\W\d_]{2,}")
_NOT_WORD = re.compile(r"[\d\W_]+")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_STATES_ANSWER = re.compile(
    r"\b(?:correct|final|original|right|wrong)\s+answer\s+(?:is|was|=)"
    r"|\banswer\s+is\b[^\n]*\d|\\boxed\{",
    re.IGNORECASE,
)
_CALCULATION = re.compile(r"\d\s*(?:[-+*/\u00d7\u00f7x]|\\times|\\div|\\cdot)\s*\d[^\n=]*=\s*\$?\d")
"""A worked calculation ("5 \\times 5 = 25"): a solution of one problem, not a method."""
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]{2,}\b")
_SENTENCE_END = ".!?:"
_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_LABEL = re.compile(
    r"^[\s*#_]*(?:(?:improved|merged|combined|new|general)\s+)?strategy[\s*_]*:[\s*_]*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Lesson:
    """What one learning request saw and produced."""

    request_id: str
    problem_type: str
    query: str
    answer: str
    truth: str | None
    used: tuple[int, ...]


def _cut(text: str) -> str:
    return text.strip()[:PROMPT_TEXT_LIMIT]


def parse_verdict(reply: str | None) -> bool | None:
    """YES -> True, NO -> False (the first of them in the reply), anything else -> None."""
    match = _VERDICT.search(reply or "")
    return None if match is None else match.group(1).lower() == "yes"


def clean_strategy(reply: str | None) -> str | None:
    """A model's strategy text without a leading "Strategy:" label, cut to
    `MAX_STRATEGY_CHARS` (at a line end where there is one); None when it is too short or not
    prose (a weak model may answer with a run of step numbers or one word repeated)."""
    text = _LABEL.sub("", (reply or "").strip(), count=1).strip()
    if len(text) > MAX_STRATEGY_CHARS:
        cut = text[:MAX_STRATEGY_CHARS]
        line_end = cut.rfind("\n")
        text = (cut[:line_end] if line_end >= MAX_STRATEGY_CHARS // 2 else cut).strip()
    return text if len(text) >= MIN_STRATEGY_CHARS and _is_prose(text) else None


def _is_prose(text: str) -> bool:
    """At least `MIN_DISTINCT_WORDS` different words, letters for most of the text, and no
    line said over and over (numbers aside)."""
    words = {w.lower() for w in _WORD.findall(text)}
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    # lines compared without their numbers: "2 to 6 steps", "3 to 6 steps" is one line repeated
    lines = [_NOT_WORD.sub(" ", line).strip().lower() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return (
        len(words) >= MIN_DISTINCT_WORDS
        and letters >= 0.5 * len(visible)
        and len(set(lines)) >= MIN_DISTINCT_LINES * len(lines)
    )


def specific_to(text: str, lesson: Lesson) -> str | None:
    """Why `text` is about this one problem rather than a general method, or None: it states
    an answer, or it repeats the correct answer or a number of two or more digits from the
    problem (a strategy that leaks an answer would mislead every later problem)."""
    if _STATES_ANSWER.search(text):
        return "it states an answer instead of a method"
    if _CALCULATION.search(text):
        return "it works out this problem's calculations instead of describing a method"
    numbers = _numbers(text)
    copied = {n for n in _numbers(lesson.query) if len(n.replace(".", "")) >= 2}
    if lesson.truth is not None:
        copied |= _numbers(lesson.truth)
    if numbers & copied:
        return "it repeats numbers of this problem"
    names = _names_inside_sentences(text) & set(_CAPITALIZED.findall(lesson.query))
    if names:
        return f"it names this problem's people or things ({', '.join(sorted(names))})"
    return None


def _names_inside_sentences(text: str) -> set[str]:
    """Capitalized words inside a sentence ("the eggs Janet lays"): names of people, places
    and things. A word that starts the text, a line, a step or a sentence is not counted."""
    names = set()
    for match in _CAPITALIZED.finditer(text):
        before = text[: match.start()].rstrip(" \t*_\"'(")
        if before and before[-1] not in _SENTENCE_END and before[-1] != "\n":
            names.add(match.group())
    return names


def same_words(a: str, b: str) -> bool:
    """Whether two strategies say the same words, whatever their markdown, case and spacing
    (a weak model asked to improve a strategy may only put its lines in bold)."""
    return _WORD.findall(a.lower()) == _WORD.findall(b.lower())


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}


def judge_messages(query: str, answer: str) -> list[Message]:
    return [Message("user", JUDGE_PROMPT.format(query=_cut(query), answer=_cut(answer)))]


def write_messages(lesson: Lesson, description: str, correct: bool | None) -> list[Message]:
    solution = SOLUTION_SECTION.format(answer=_cut(lesson.answer)) if correct else ""
    truth = TRUTH_SECTION.format(truth=_cut(lesson.truth)) if lesson.truth is not None else ""
    prompt = WRITE_PROMPT.format(
        problem_type=lesson.problem_type,
        description=description,
        query=_cut(lesson.query),
        solution=solution,
        truth=truth,
    )
    return [Message("user", prompt)]


def merge_messages(problem_type: str, existing: str, new: str) -> list[Message]:
    prompt = MERGE_PROMPT.format(problem_type=problem_type, existing=existing, new=new)
    return [Message("user", prompt)]


def refine_messages(lesson: Lesson, strategy: str) -> list[Message]:
    truth = TRUTH_SECTION.format(truth=_cut(lesson.truth)) if lesson.truth is not None else ""
    prompt = REFINE_PROMPT.format(
        problem_type=lesson.problem_type,
        strategy=strategy,
        query=_cut(lesson.query),
        answer=_cut(lesson.answer),
        truth=truth,
    )
    return [Message("user", prompt)]


async def outcome(ctx: RequestContext, lesson: Lesson, judge: bool) -> tuple[bool | None, str]:
    """Whether the answer was correct, and the source of that verdict ("none" when unknown)."""
    if lesson.truth is not None:
        return same_answer(lesson.answer, lesson.truth), "ground_truth"
    if not judge:
        return None, "none"
    (reply,) = await ctx.complete(
        judge_messages(lesson.query, lesson.answer), helper_sampling(ctx.sampling, JUDGE_MAX_TOKENS)
    )
    verdict = parse_verdict(reply.content)
    return verdict, "judge" if verdict is not None else "none"


async def evolve(
    ctx: RequestContext, store: Store, lesson: Lesson, correct: bool | None, description: str
) -> None:
    """At most one change to the tenant's strategies (see the module docstring)."""
    records = await asyncio.to_thread(store.strategies, ctx.tenant, lesson.problem_type)
    by_id = {r.id: r for r in records}
    used = [by_id[i] for i in lesson.used if i in by_id]
    bar = await asyncio.to_thread(refine_below, store, ctx.tenant, lesson.problem_type)
    weak = [
        s
        for s in used
        if correct is False
        and bar is not None
        and s.status != "retired"
        and s.attempts >= REFINE_AFTER
        and (s.success_rate or 0.0) < bar
    ]
    if weak:
        target = min(weak, key=lambda s: (s.success_rate or 0.0, s.id))
        await _refine(ctx, store, lesson, target)
    elif not lesson.used or (correct is False and lesson.truth is not None):
        peers = [r for r in records if r.status in ("active", "candidate")]
        await _write(ctx, store, lesson, correct, description, peers)


def refine_below(store: Store, tenant: str, problem_type: str) -> float | None:
    """The success rate under which a failing strategy of the type is refined: the type's
    baseline rate once the control arm has measured it (a strategy doing no worse than no
    strategy is not rewritten); `REFINE_BELOW` with the control arm off; None (no refinement)
    while the baseline is still being measured."""
    rules = store.lifecycle
    baseline = measured(store.baselines(tenant).get(problem_type), rules)
    if baseline is not None:
        return baseline.successes / baseline.attempts
    return None if rules.explore > 0 else REFINE_BELOW


async def _write(
    ctx: RequestContext,
    store: Store,
    lesson: Lesson,
    correct: bool | None,
    description: str,
    peers: Sequence[StrategyRecord],
) -> None:
    text = await _ask(ctx, store, lesson, write_messages(lesson, description, correct), "written")
    if text is None:
        return
    if peers:
        relevance = similarities(strategy_vector(text), [strategy_vector(p.text) for p in peers])
        best = int(relevance.argmax())
        if relevance[best] >= MERGE_THRESHOLD:
            await _merge(ctx, store, lesson, peers[best], text, float(relevance[best]))
            return
    added = await asyncio.to_thread(
        store.add_strategy,
        ctx.tenant,
        Draft(lesson.problem_type, text),
        origin="learned",
        request_id=lesson.request_id,
    )
    if added is None:
        ctx.step("spl_skipped", reason="the problem type's candidate slots are full")
    else:
        ctx.step("spl_created", id=added.id)


async def _merge(
    ctx: RequestContext,
    store: Store,
    lesson: Lesson,
    existing: StrategyRecord,
    new: str,
    relevance: float,
) -> None:
    messages = merge_messages(lesson.problem_type, existing.text, new)
    merged = await _ask(ctx, store, lesson, messages, "merged", existing.id, existing.text)
    if merged is None:
        return
    detail = {"relevance": round(relevance, 3)}
    await _edit(ctx, store, lesson, existing, merged, "merged", detail)


async def _refine(
    ctx: RequestContext, store: Store, lesson: Lesson, target: StrategyRecord
) -> None:
    messages = refine_messages(lesson, target.text)
    refined = await _ask(ctx, store, lesson, messages, "refined", target.id, target.text)
    if refined is None:
        return
    detail = {"attempts": target.attempts, "successes": target.successes}
    await _edit(ctx, store, lesson, target, refined, "refined", detail)


async def _edit(
    ctx: RequestContext,
    store: Store,
    lesson: Lesson,
    target: StrategyRecord,
    text: str,
    kind: str,
    detail: dict[str, Any],
) -> None:
    """Replace the strategy by one with the new text, its own counters and a link to it, if it
    is still at the version it was read at."""
    try:
        child = await asyncio.to_thread(
            store.supersede,
            ctx.tenant,
            target.id,
            text,
            expected_version=target.version,
            kind=kind,
            request_id=lesson.request_id,
            detail=detail,
        )
    except Conflict as exc:
        ctx.step("spl_conflict", id=target.id, kind=kind, error=exc.message)
        return
    ctx.step(f"spl_{kind}", id=child.id, parent=target.id)


async def _ask(
    ctx: RequestContext,
    store: Store,
    lesson: Lesson,
    messages: Sequence[Message],
    what: str,
    strategy_id: int | None = None,
    original: str | None = None,
) -> str | None:
    """The model's strategy text for `messages`, or None when it is not usable: then the
    refusal is traced and kept as a "rejected" learning event, so an operator can see what
    the model proposed and why it was not used."""
    (reply,) = await ctx.complete(messages, helper_sampling(ctx.sampling, EVOLVE_MAX_TOKENS))
    text = clean_strategy(reply.content)
    why = "it is too short or not prose" if text is None else specific_to(text, lesson)
    if why is None and text is not None and original is not None and same_words(text, original):
        why = "it does not change the strategy (only its formatting differs)"
    if text is not None and why is None:
        return text
    reason = f"the {what} strategy was not used: {why}"
    ctx.step("spl_skipped", reason=reason, id=strategy_id)
    await asyncio.to_thread(
        store.note,
        ctx.tenant,
        "rejected",
        request_id=lesson.request_id,
        strategy_id=strategy_id,
        reason=reason,
        proposed=(reply.content or "").strip()[:REJECTED_PREVIEW],
    )
    return None
