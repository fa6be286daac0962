"""`memory`, a plugin: an unbounded context. An input too long for the backend's context
window is read in parts; after each part the model rewrites a bounded memory of what matters to
the question; the rest of the route (`none` in `memory-model`, `sc` in `memory&sc-model`)
answers from the memory and the question.

- Fits: when the conversation and room for the answer fit in the window, the rest of the route
  gets it unchanged, with no call of the plugin's own.
- Read: the document (the last user message, or the whole conversation after the system prompt
  when it has several turns) is split by tokens into parts that overlap a little. Each part is
  one backend call: the question, the memory so far, the part; the reply is the new memory.
- Bound: the memory is capped at `memory_tokens` (the update call's max_tokens too; less
  where the window cannot hold two memories and a part, see `chunks.fit_cap`). A reply
  over the cap is condensed by one more call; still over, it is cut at the cap.
- Answer: the system prompt with the memory in a labelled block, then the question as the
  user message, through the rest of the route.

The question is the `question` option, else the last paragraph of the last user message.
The context window is the backend's (the embedded one knows it), else the `context_window`
option; with neither the request is refused with a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

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
    fits,
    long_input,
    message_tokens,
    notes_room,
    split,
    usable,
)
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import helper_sampling
from ponder.strategies.context import RequestContext
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message, Sampling

SLUG = "memory"

UPDATE_SYSTEM = (
    "You are reading a long text one part at a time, to answer a question about it later. "
    "You cannot see the earlier parts again: all you keep is your memory, notes of everything "
    "in the text that helps answer the question (facts, figures, names, dates, definitions, "
    "short quotes, and where they stood). After each part, rewrite the memory: keep what still "
    "matters, add what this part brings, drop what does not help. Reply with the new memory "
    "only, at most {cap} tokens."
)
UPDATE_USER = (
    "Question: {question}\n\n"
    "Memory so far:\n{memory}\n\n"
    "--- Part {number} of {parts} ---\n{part}\n--- End of part {number} ---\n\n"
    "Write the updated memory."
)
EMPTY_MEMORY = "(empty)"
CONDENSE_SYSTEM = (
    "Condense these notes to at most {cap} tokens, keeping every fact that helps answer the "
    "question. Reply with the condensed notes only."
)
CONDENSE_USER = "Question: {question}\n\nNotes:\n{memory}"
CONDENSE_INPUT = 2
"""A reply more than this many times the cap is cut to it before being condensed (to less where
the window holds less)."""

NOTES_TITLE = "Memory of the full input"
NOTES_INTRO = (
    "The input was too long to read at once. Ponder read all of it in parts and kept these "
    "notes about the question; answer from them."
)


class MemoryConfig(LongInputConfig):
    memory_tokens: int = Field(
        512, ge=32, le=8192, description="The memory's cap in tokens: over it, condensed, then cut"
    )


class Memory:
    slug: ClassVar[str] = SLUG
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = MemoryConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, MemoryConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        window = context_window(ctx, self.config.context_window, SLUG)
        if fits(messages, window, answer_tokens(ctx, self.config.answer_tokens, window)):
            ctx.step(SLUG, fits=True, prompt_tokens=message_tokens(messages), window=window)
            return await inner(ctx, messages)

        long = long_input(messages, self.config.question, SLUG)
        template = update_prompt(long.question, "", "", 1, 1, self.config.memory_tokens)
        cap, left = notes_room(
            window, count_prompt_tokens(template), self.config.memory_tokens, 2, SLUG
        )
        size, overlap = chunk_size(self.config.chunk_tokens, left, self.config.overlap_tokens)
        parts = split(long.document, size, overlap)
        ensure_budget(ctx, len(parts) + 1, SLUG, len(parts))
        ctx.reason(f"The input is too long for one call: reading it in {len(parts)} parts.\n")

        sampling = helper_sampling(ctx.sampling, cap)
        # what a reply counted over the cap is condensed from: twice the cap, at most what the
        # window holds beside the condense prompt and its reply (a cap larger than the parts
        # leaves less than twice itself)
        condense_template = count_prompt_tokens(condense_prompt(long.question, "", cap))
        condense_from = min(CONDENSE_INPUT * cap, usable(window) - condense_template - SLACK - cap)
        memory = ""
        for number, part in enumerate(parts, start=1):
            memory = await self._update(
                ctx, sampling, cap, condense_from, long.question, memory, part, number, len(parts)
            )
        ctx.step(
            SLUG,
            fits=False,
            parts=len(parts),
            chunk_tokens=size,
            overlap_tokens=overlap,
            memory_cap=cap,
            memory_tokens=count_tokens(memory),
        )
        notes = memory or EMPTY_MEMORY
        return await inner(ctx, answer_messages(long, NOTES_TITLE, NOTES_INTRO, notes))

    async def _update(
        self,
        ctx: RequestContext,
        sampling: Sampling,
        cap: int,
        condense_from: int,
        question: str,
        memory: str,
        part: str,
        number: int,
        parts: int,
    ) -> str:
        """The memory after reading `part`, within `cap` tokens."""
        (reply,) = await ctx.complete(
            update_prompt(question, memory, part, number, parts, cap), sampling
        )
        new = (reply.content or "").strip()
        condensed = was_cut = False
        if count_tokens(new) > cap:
            condensed = True
            prompt = condense_prompt(question, cut(new, condense_from), cap)
            (reply,) = await ctx.complete(prompt, sampling)
            new = (reply.content or "").strip()
            if count_tokens(new) > cap:
                new, was_cut = cut(new, cap), True
        tokens = count_tokens(new)
        ctx.reason(f"Read part {number} of {parts}; the memory holds {tokens} tokens.\n")
        ctx.step(
            "memory_update",
            part=number,
            tokens=tokens,
            condensed=condensed,
            cut=was_cut,
        )
        return new


def update_prompt(
    question: str, memory: str, part: str, number: int, parts: int, cap: int
) -> list[Message]:
    """The call that reads part `number` and rewrites the memory (of at most `cap` tokens)."""
    return [
        Message("system", UPDATE_SYSTEM.format(cap=cap)),
        Message(
            "user",
            UPDATE_USER.format(
                question=question,
                memory=memory or EMPTY_MEMORY,
                number=number,
                parts=parts,
                part=part,
            ),
        ),
    ]


def condense_prompt(question: str, memory: str, cap: int) -> list[Message]:
    return [
        Message("system", CONDENSE_SYSTEM.format(cap=cap)),
        Message("user", CONDENSE_USER.format(question=question, memory=memory)),
    ]
