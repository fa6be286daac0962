"""How a strategy shows the model its own earlier outputs (drafts, candidates, solutions,
reviews) and reads the model's judgement of them back.

- The material goes inside the client's last user turn, after its request (`after_request`),
  with the call's instructions after it; the rest of the conversation is kept as it is. Given
  drafts as an assistant turn of their own, Qwen2.5-Coder 1.5B did not see them as drafts (its
  critique asked for them to be provided, in 5 of 5 GSM8K items).
- Several outputs are numbered, "Draft 1: ..." and so on, a paragraph each (`numbered`); one
  output alone is shown as it is (`marked`). Either way an output cut off at the token limit
  says so, so that its last line is not taken for its answer.
- The model's judgement comes back on a last line: `Selected: N` (`selection`) or a verdict
  such as `VERDICT: FIX` (`verdict`).
- When the model's judgement cannot tell outputs apart, `best` ranks them by what is known
  without it; `choose` does the same and keeps in the trace what it chose from.
- A list the model writes (observations, principles) is read back item by item (`parse_list`),
  and a list of short items is shown to it numbered, one a line (`listing`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from ponder.answers import states_placeholder
from ponder.strategies.common import cut_off, last_user_index, preview, rewrite_last_user, voice
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

_FORM = (
    "in the form {} asks for, with the actual result in place of any placeholder (such as N) in "
    "that form"
)
REQUESTED_FORM = _FORM.format("my request")
"""How a call that writes the answer again asks for the client's form: told only "in the form
my request asks for", Qwen2.5-Coder 1.5B answered a GSM8K request (which ends `"The answer is
N." where N is the final number`) with that line alone, N and all, in 4 of 37 moa syntheses
and 3 of 50 refine revisions."""
REQUESTED_FORM_OF_USER = _FORM.format("the user's request")
"""The same, for a system prompt speaking of the user's request (`tot`'s last call: its path
said "The answer is N." and the answer copied it, 1 of 16 items in the fourth round)."""

CUT_OFF_MARK = " (cut off at the length limit before it finished)"
CUT_OFF_NOTE = "(Cut off at the length limit before it finished.)"

_SELECTED = re.compile(r"\bselected[^\w\n]*(?:[a-z]+[^\w\n]*)?(\d+)", re.IGNORECASE)
_DECORATION = " .!*`#\"'"
_LIST_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s+(.*\S)")


def after_request(messages: Sequence[Message], *blocks: str) -> list[Message]:
    """The conversation with `blocks` added to its last user turn, after the request (or as a
    user turn of their own when it has none)."""
    text = "\n\n".join(blocks)
    if last_user_index(messages) < 0:
        return [*messages, Message("user", text)]
    return rewrite_last_user(messages, lambda request: f"{request}\n\n{text}")


def numbered(label: str, outputs: Sequence[Completion]) -> str:
    """The outputs as "<label> 1: ...", "<label> 2: ..." and so on, a paragraph each; one cut
    off at the token limit is marked as such."""
    return "\n\n".join(
        f"{label} {i}{CUT_OFF_MARK if cut_off(o) else ''}: {o.content or ''}"
        for i, o in enumerate(outputs, start=1)
    )


def announce(ctx: RequestContext, step: str, label: str, outputs: Sequence[Completion]) -> None:
    """Sampled outputs as reasoning lines ("<label> 1: ..."), and as the trace step `step`
    holding their texts and the numbers of those cut off at the token limit."""
    for i, output in enumerate(outputs, start=1):
        ctx.reason(f"{label} {i}: {preview(output.content, 80)}\n")
    ctx.step(
        step,
        **{step: [o.content or "" for o in outputs]},
        cut_off=[i for i, o in enumerate(outputs, start=1) if cut_off(o)],
    )


def marked(output: Completion) -> str:
    """One output as the model is shown it: its text, after a note when it was cut off."""
    text = output.content or ""
    return f"{CUT_OFF_NOTE}\n\n{text}" if cut_off(output) else text


def worked_out(candidates: Sequence[Completion]) -> list[int]:
    """The indices of the candidates that do not state a placeholder as their answer ("The
    answer is N.": they stopped before the result), or all of them when every one does. (On
    GSM8K the 1.5B's plansearch solutions copied their plan, uncomputed, and ended "The answer
    is N." in 8 of 30 items, and the selection picked one.)"""
    kept = [i for i, c in enumerate(candidates) if not states_placeholder(c.content)]
    return kept or list(range(len(candidates)))


def selection(text: str | None, count: int) -> int | None:
    """The 0-based index named by the last `Selected: N` (or `Selected: candidate N`) of
    `text`; None when there is none, or N is outside 1..count."""
    found = _SELECTED.findall(text or "")
    if not found:
        return None
    number = int(found[-1])
    return number - 1 if 1 <= number <= count else None


def verdict(text: str, words: Sequence[str], prefix: str = "VERDICT:") -> str | None:
    """The word of `words` that the last `prefix` line of `text` starts with (case and markdown
    decoration aside); None when there is no such line, or it names none of them (an earlier
    line does not count then). Put a word before any word that starts it ("NO ISSUES" before
    "NO")."""
    for line in reversed(text.splitlines()):
        said = line.upper().strip(_DECORATION)
        if said.startswith(prefix):
            rest = said.removeprefix(prefix).strip(_DECORATION)
            return next((word for word in words if rest.startswith(word)), None)
    return None


def best(
    candidates: Sequence[Completion], scores: Sequence[float], *, agreement_first: bool = False
) -> int:
    """The index of the best candidate: finished over cut off at `max_tokens`, then the higher
    score, then the final answer more candidates share, then the earlier. With
    `agreement_first`, the shared answer comes before the score (the score then chooses among
    the candidates whose answers are equally shared)."""
    return ranked_best(
        [voice(c) for c in candidates],
        [cut_off(c) for c in candidates],
        scores,
        agreement_first=agreement_first,
    )


def ranked_best(
    answers: Sequence[str | None],
    cut: Sequence[bool],
    scores: Sequence[float],
    *,
    agreement_first: bool = False,
) -> int:
    """`best` from what it reads of each candidate: its final answer (None when it has none),
    whether it was cut off, and its score; what a replay has from a `choose` trace step."""
    support = Counter(a for a in answers if a is not None)

    def rank(i: int) -> tuple[bool, float, float, int]:
        answer = answers[i]
        shared = support[answer] if answer else 0
        first, second = (shared, scores[i]) if agreement_first else (scores[i], shared)
        return (not cut[i], first, second, -i)

    return max(range(len(answers)), key=rank)


def choose(
    ctx: RequestContext,
    step: str,
    candidates: Sequence[Completion],
    scores: Sequence[float],
    *,
    agreement_first: bool = False,
) -> int:
    """`best` of the candidates, kept as the trace step `step`: each candidate's score, final
    answer and whether it was cut off (by number, from 1), and the choice, so that a replay can
    rank the same candidates in the other order."""
    chosen = best(candidates, scores, agreement_first=agreement_first)
    ctx.step(
        step,
        scores=list(scores),
        answers=[voice(c) for c in candidates],
        cut_off=[i for i, c in enumerate(candidates, start=1) if cut_off(c)],
        best=chosen,
    )
    return chosen


def parse_list(text: str | None) -> list[str]:
    """The items of a numbered or bulleted list in `text`; with no list, the whole text as one
    item (none when it is empty)."""
    items = [m.group(1) for line in (text or "").splitlines() if (m := _LIST_ITEM.match(line))]
    if items:
        return items
    whole = (text or "").strip()
    return [whole] if whole else []


def listing(items: Sequence[str]) -> str:
    """`items` as a numbered list, "1. ...", one a line."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
