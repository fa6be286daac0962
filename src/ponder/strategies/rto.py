"""`rto`: round-trip optimization. The model answers the client's conversation; then restates,
from that answer, the request it answers, as a precise, self-contained specification; then
answers that restated request alone, in a fresh conversation that keeps only the client's
system prompt. Two answers that agree suggest that the first one solves what was asked; two
that disagree are reconciled.

The two answers agree when their final answers (`voice`: `\\boxed{}`, `####`, "answer is", a
choice letter, the last number, else the text) are the same. When both final answers are
numbers or choice letters and differ, or either answer was cut off at the token limit, they
disagree. Otherwise (prose, code: final answers that cannot be compared) and with `judge` on,
one short judging call asks the model whether the two answers are equivalent. Agreeing answers
return the first one as it was written; disagreeing ones go to one reconciliation call, which
writes the final answer from the client's conversation with both answers after its request
(in its last user turn), and streams to a streaming client.

Calls, one after another: the first answer, the restatement and the second answer (the answers
use the client's sampling; the restatement and the judge use the strategy's token limits at
temperature 0), then, at the defaults:
3 when the final answers are the same;
4 when they differ as numbers or letters, or one was cut off (the reconciliation), or when the
judge finds them equivalent;
5 when the judge finds them different (the judge, then the reconciliation).
With `judge` off, 3 or 4. A first answer with no text (a tool call) is returned at once, and an
empty restatement returns the first answer (1 or 2 calls). A failed call fails the request.
For the request's `n`, the engine runs `n` independent round trips.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import followup, helper_sampling, preview, voice
from ponder.strategies.context import RequestContext
from ponder.strategies.showing import REQUESTED_FORM, after_request, numbered
from ponder.types import Completion, Message

RESTATE_PROMPT = (
    "Write the request that your answer above answers, as a precise, self-contained "
    "specification: every fact, number and constraint the answer relies on, and exactly what "
    "it asks for, so that someone could write the same answer from it alone. Do not solve it "
    "and do not give the answer. Reply with only the request."
)
ANSWERS_INTRO = "Here are two answers to my request above, written independently:"
JUDGE_PROMPT = (
    "Do not answer my request yourself. Do the two answers give the same final result? Reply "
    "with only SAME or DIFFERENT."
)
RECONCILE_PROMPT = (
    "The two answers may disagree. Check the steps and calculations of each against my request, "
    f"and write the one correct, complete answer to my request, {REQUESTED_FORM}. Do not "
    "mention the two answers."
)
_COMPARABLE = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?|[A-J]")
_VERDICT = re.compile(r"\b(SAME|DIFFERENT)\b", re.IGNORECASE)


class RoundTripConfig(StrategyConfig):
    restate_tokens: int = Field(
        512, ge=1, description="Token limit of the call that restates the first answer's request"
    )
    judge: bool = Field(
        True,
        description="Ask the model whether the two answers are equivalent when their final "
        "answers cannot be compared as numbers or choice letters (off: reconcile them)",
    )
    judge_tokens: int = Field(8, ge=1, description="Token limit of the judging call")


def system_prompt(messages: Sequence[Message]) -> list[Message]:
    """The conversation's leading system (or developer) messages."""
    kept: list[Message] = []
    for message in messages:
        if message.role not in ("system", "developer"):
            break
        kept.append(message)
    return kept


def comparison(first: Completion, second: Completion) -> bool | None:
    """Whether the two answers agree by their final answers: True or False where that settles
    it, None where a judge has to (final answers that are neither numbers nor letters)."""
    a, b = voice(first), voice(second)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if _COMPARABLE.fullmatch(a) and _COMPARABLE.fullmatch(b):
        return False
    return None


def parse_verdict(text: str | None) -> bool:
    """Whether a judge's reply says SAME (its first SAME or DIFFERENT); anything else is no."""
    found = _VERDICT.search(text or "")
    return found is not None and found.group(1).upper() == "SAME"


class RoundTrip:
    slug: ClassVar[str] = "rto"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = RoundTripConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, RoundTripConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        config = self.config
        (first,) = await ctx.complete(messages, ctx.sampling)
        if first.tool_calls or not (first.content or "").strip():
            ctx.step("first", answer=first.content or "", round_trip=False)
            return [first]
        ctx.reason(f"First answer: {preview(first.content, 80)}\n")
        ctx.step("first", answer=first.content or "", round_trip=True)

        restating = helper_sampling(ctx.sampling, config.restate_tokens, 0.0)
        (restated,) = await ctx.complete(
            followup(messages, first.content or "", RESTATE_PROMPT), restating
        )
        request = (restated.content or "").strip()
        ctx.reason(f"Restated request: {preview(request, 200)}\n")
        ctx.step("restated", request=request)
        if not request:
            return [first]

        (second,) = await ctx.complete(
            [*system_prompt(messages), Message("user", request)], ctx.sampling
        )
        ctx.reason(f"Second answer: {preview(second.content, 80)}\n")
        agree = comparison(first, second)
        judged = agree is None and config.judge
        if judged:
            judging = helper_sampling(ctx.sampling, config.judge_tokens, 0.0)
            (verdict,) = await ctx.complete(
                after_request(
                    messages, ANSWERS_INTRO, numbered("Answer", (first, second)), JUDGE_PROMPT
                ),
                judging,
            )
            agree = parse_verdict(verdict.content)
            ctx.reason(f"Judge: {preview(verdict.content, 80)}\n")
        ctx.step("compare", second=second.content or "", agree=bool(agree), judged=judged)
        if agree:
            ctx.reason("The answers agree: the first one stands\n")
            return [first]
        ctx.reason("The answers disagree: reconciling them\n")
        reconcile = after_request(
            messages, ANSWERS_INTRO, numbered("Answer", (first, second)), RECONCILE_PROMPT
        )
        return await ctx.final(reconcile, ctx.sampling)
