"""`longcepo`, a plugin: long-context planning for inputs beyond the backend's context window.
The input is split into parts; every part is read at once with the question (map), the notes
are combined (reduce), and the rest of the route (`none` in `longcepo-model`, `sc` in
`longcepo&sc-model`) answers from the combined notes and the question.

- Fits: when the conversation and room for the answer fit in the window, the rest of the route
  gets it unchanged, with no call of the plugin's own.
- Map: the document (the last user message, or the whole conversation after the system prompt
  when it has several turns) is split by tokens into parts that overlap a little; one call per
  part, all started together (bounded by the backend's concurrency), each writing notes of
  what in its part bears on the question, at most `notes_tokens` (less where the window
  cannot hold it, see `chunks.fit_cap`). A part with nothing relevant
  answers NOTHING RELEVANT and is dropped. One failed call fails the request: nothing is
  answered from a partial reading.
- Reduce: the notes, when more than one part kept some, are combined by one call; when they do
  not fit in one, by rounds of calls over groups that fit (each group at least two notes), until
  one set of notes is left.
- Answer: the system prompt with the notes in a labelled block, then the question as the user
  message, through the rest of the route.

The question is the `question` option, else the last paragraph of the last user message.
The context window is the backend's (the embedded one knows it), else the `context_window`
option; with neither the request is refused with a 400.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from ponder.plugins.base import Inner
from ponder.plugins.chunks import (
    SLACK,
    LongInputConfig,
    answer_messages,
    answer_tokens,
    chunk_size,
    context_window,
    cut,
    ensure_budget,
    fit_cap,
    fits,
    long_input,
    message_tokens,
    notes_room,
    split,
    usable,
)
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import helper_sampling
from ponder.strategies.context import RequestContext, gather
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message, Sampling

SLUG = "longcepo"

NOTHING = "NOTHING RELEVANT"
MAP_SYSTEM = (
    "You read one part of a long text that is too long to read at once, to help answer a "
    "question about the whole text. Write notes of everything in this part that bears on the "
    "question: facts, figures, names, dates, definitions, short quotes. Write only what the "
    "part says; other parts are read separately. At most {cap} tokens. If nothing in this part "
    f"bears on the question, reply exactly: {NOTHING}"
)
MAP_USER = (
    "Question: {question}\n\n"
    "--- Part {number} of {parts} ---\n{part}\n--- End of part {number} ---\n\n"
    "Write your notes."
)
REDUCE_SYSTEM = (
    "You combine notes taken from different parts of a long text into one set of notes for a "
    "question. Keep every fact that bears on the question, merge repeats, and say where the "
    "notes contradict each other. At most {cap} tokens; reply with the combined notes only."
)
REDUCE_USER = "Question: {question}\n\n{notes}\n\nWrite the combined notes."
NOTE = "[Notes {number}]\n{note}"

NOTES_TITLE = "Notes from the full input"
NOTES_INTRO = (
    "The input was too long to read at once. Ponder read all of it in parts and took these "
    "notes about the question; answer from them."
)
NO_NOTES = "No part of the input bears on the question."


class LongCepoConfig(LongInputConfig):
    notes_tokens: int = Field(
        512,
        ge=32,
        le=8192,
        description="Most tokens of the notes of one part, and of combined notes",
    )


class LongCepo:
    slug: ClassVar[str] = SLUG
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = LongCepoConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, LongCepoConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        window = context_window(ctx, self.config.context_window, SLUG)
        if fits(messages, window, answer_tokens(ctx, self.config.answer_tokens, window)):
            ctx.step(SLUG, fits=True, prompt_tokens=message_tokens(messages), window=window)
            return await inner(ctx, messages)

        long = long_input(messages, self.config.question, SLUG)
        question = long.question
        cap, reduce_room = self._reduce_room(window, question)
        template = map_prompt(question, "", 1, 1, cap)
        cap, left = notes_room(window, count_prompt_tokens(template), cap, 1, SLUG)
        size, overlap = chunk_size(self.config.chunk_tokens, left, self.config.overlap_tokens)
        parts = split(long.document, size, overlap)
        ensure_budget(ctx, len(parts) + 1, SLUG, len(parts))
        ctx.reason(f"The input is too long for one call: reading its {len(parts)} parts at once.\n")

        sampling = helper_sampling(ctx.sampling, cap)
        found = await gather(
            [
                self._map(ctx, sampling, cap, question, part, number, len(parts))
                for number, part in enumerate(parts, start=1)
            ]
        )
        notes = [note for note in found if note is not None]
        ctx.step(
            "longcepo_map",
            parts=len(parts),
            chunk_tokens=size,
            overlap_tokens=overlap,
            notes_cap=cap,
            relevant=[number for number, note in enumerate(found, start=1) if note is not None],
        )
        combined = await self._reduce(ctx, sampling, cap, question, notes, reduce_room)
        return await inner(ctx, answer_messages(long, NOTES_TITLE, NOTES_INTRO, combined))

    def _reduce_room(self, window: int, question: str) -> tuple[int, int]:
        """The notes' cap (`notes_tokens`, less where a reduce call cannot carry two notes of
        it and write a third) and the tokens of notes one reduce call may carry."""
        prompt = count_prompt_tokens(reduce_prompt(question, [], self.config.notes_tokens))
        entry = count_tokens(NOTE.format(number=100, note="")) + 2
        spare = usable(window) - prompt - SLACK - 2 * entry
        cap = fit_cap(self.config.notes_tokens, spare, 3, window, SLUG, part=0)
        return cap, spare + 2 * entry - cap

    async def _map(
        self,
        ctx: RequestContext,
        sampling: Sampling,
        cap: int,
        question: str,
        part: str,
        number: int,
        parts: int,
    ) -> str | None:
        """The notes of one part, within `cap` tokens; None when it has nothing relevant."""
        (reply,) = await ctx.complete(map_prompt(question, part, number, parts, cap), sampling)
        text = (reply.content or "").strip()
        if irrelevant(text):
            ctx.reason(f"Part {number} of {parts}: nothing relevant.\n")
            return None
        note = cut(text, cap)
        ctx.reason(f"Part {number} of {parts}: {count_tokens(note)} tokens of notes.\n")
        return note

    async def _reduce(
        self,
        ctx: RequestContext,
        sampling: Sampling,
        cap: int,
        question: str,
        notes: list[str],
        space: int,
    ) -> str:
        """One set of notes from all of them: rounds of calls over groups that fit."""
        if not notes:
            return NO_NOTES
        rounds = 0
        while len(notes) > 1:
            rounds += 1
            groups = group(notes, space)
            calls: list[Coroutine[Any, Any, str]] = [
                self._combine(ctx, sampling, cap, question, g) for g in groups
            ]
            notes = await gather(calls)
            ctx.step("longcepo_reduce", round=rounds, groups=len(groups), notes=len(notes))
            ctx.reason(f"Combined the notes into {len(notes)} (round {rounds}).\n")
        return cut(notes[0], cap)

    async def _combine(
        self, ctx: RequestContext, sampling: Sampling, cap: int, question: str, notes: list[str]
    ) -> str:
        if len(notes) == 1:
            return notes[0]
        (reply,) = await ctx.complete(reduce_prompt(question, notes, cap), sampling)
        return cut((reply.content or "").strip(), cap)


def irrelevant(text: str) -> bool:
    """Whether a part's reply says it has nothing relevant (or says nothing)."""
    return text.strip(" \t\n.!*\"'`").upper() in ("", NOTHING)


def group(notes: Sequence[str], space: int) -> list[list[str]]:
    """Consecutive notes in groups whose entries take at most `space` tokens together."""
    groups: list[list[str]] = []
    total = space + 1
    for note in notes:
        size = count_tokens(NOTE.format(number=len(notes), note=note)) + 2
        if total + size > space:
            groups.append([])
            total = 0
        groups[-1].append(note)
        total += size
    return groups


def map_prompt(question: str, part: str, number: int, parts: int, cap: int) -> list[Message]:
    """The call that takes notes of part `number`."""
    return [
        Message("system", MAP_SYSTEM.format(cap=cap)),
        Message(
            "user",
            MAP_USER.format(question=question, number=number, parts=parts, part=part),
        ),
    ]


def reduce_prompt(question: str, notes: Sequence[str], cap: int) -> list[Message]:
    """The call that combines `notes` into one set."""
    entries = "\n\n".join(NOTE.format(number=i, note=n) for i, n in enumerate(notes, start=1))
    return [
        Message("system", REDUCE_SYSTEM.format(cap=cap)),
        Message("user", REDUCE_USER.format(question=question, notes=entries)),
    ]
