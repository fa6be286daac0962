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
   "rejected" learning event for the operator to see (the checks are in `proposals.py`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from ponder.answers import same_answer
from ponder.errors import Conflict
from ponder.spl.proposals import Lesson, clean_strategy, same_words, specific_to
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

_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def _cut(text: str) -> str:
    return text.strip()[:PROMPT_TEXT_LIMIT]


def parse_verdict(reply: str | None) -> bool | None:
    """YES -> True, NO -> False (the first of them in the reply), anything else -> None."""
    match = _VERDICT.search(reply or "")
    return None if match is None else match.group(1).lower() == "yes"


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
