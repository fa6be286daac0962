"""`compact`, a plugin: a long conversation compacted before the rest of the route sees it.
Past `threshold` of the backend's context window, the older turns are summarised into a
structured brief (goals; facts and decisions; tool results; open questions) and the recent
turns are kept verbatim; the rest of the route (`none` in `compact-model`, `sc` in
`compact&sc-model`) answers from the system prompt, the brief and the recent turns.

- Below the threshold: the conversation goes on unchanged, with no call of the plugin's own.
- Turns: a turn is a user message and every message after it up to the next user message (the
  replies, tool calls and tool results), so a tool call and its result are never split. The
  last `keep_turns` turns within `keep_tokens` are kept (the last one always).
- Kept verbatim, always: the system prompt, and any system message of the older turns (placed
  after it, in order).
- The brief: one backend call over a transcript of the older turns (more than one, each updating
  the brief, when the transcript does not fit in one); at most `brief_tokens` tokens (less where
  the window cannot hold two briefs and a part, see `chunks.fit_cap`), cut there if the reply
  runs over. It is a system message labelled as a summary of earlier turns.

The context window is the backend's (the embedded one knows it), else the `context_window`
option; with neither the request is refused with a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from ponder.plugins.base import Inner
from ponder.plugins.chunks import (
    SYSTEM_ROLES,
    context_window,
    cut,
    ensure_budget,
    message_tokens,
    notes_room,
    split,
    transcript,
)
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import helper_sampling
from ponder.strategies.context import RequestContext
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message

SLUG = "compact"

BRIEF_SYSTEM = (
    "You compact a long conversation between a user and an assistant. Write a brief of the "
    "earlier turns that lets the assistant carry on without them, in these sections:\n"
    "## Goals\nWhat the user wants, and any constraints or preferences they stated.\n"
    "## Facts and decisions\nWhat was established or agreed, with exact names, figures, code "
    "identifiers and file paths.\n"
    "## Tool results\nWhat tools were called and what they returned, where it still matters.\n"
    "## Open questions\nWhat is still undecided or unanswered.\n"
    "Write 'None.' under a section with nothing in it. At most {cap} tokens; reply with the "
    "brief only."
)
BRIEF_USER = (
    "{previous}--- Earlier turns{part} ---\n{turns}\n--- End of earlier turns ---\n\n"
    "Write the brief."
)
BRIEF_PREVIOUS = "The brief so far, of the turns before these; update it:\n{brief}\n\n"
SUMMARY = (
    "### Summary of earlier turns\n"
    "Ponder summarised the {count} earliest turns of this conversation to fit the model's "
    "context; the recent turns follow as they were.\n\n{brief}\n### End of summary"
)


class CompactConfig(StrategyConfig):
    context_window: int | None = Field(
        None,
        ge=256,
        le=10_000_000,
        description="Tokens one backend call holds (default: what the backend reports)",
    )
    threshold: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Share of the context window past which the older turns are summarised",
    )
    keep_turns: int = Field(
        4,
        ge=1,
        le=1000,
        description="Most recent turns kept verbatim (a turn: a user message and the replies, "
        "tool calls and results after it)",
    )
    keep_tokens: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Most tokens of the recent turns kept verbatim; the last turn is always "
        "kept (default: half of the threshold's share of the window)",
    )
    brief_tokens: int = Field(
        512, ge=64, le=8192, description="The brief's cap in tokens (cut there if longer)"
    )


class Compact:
    slug: ClassVar[str] = SLUG
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = CompactConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, CompactConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        window = context_window(ctx, self.config.context_window, SLUG)
        tokens = message_tokens(messages)
        limit = int(window * self.config.threshold)
        head, turns = split_turns(messages)
        keep_tokens = self.config.keep_tokens or limit // 2
        kept = recent(turns, self.config.keep_turns, keep_tokens)
        older = turns[: len(turns) - len(kept)]
        if tokens <= limit or not older:
            ctx.step(SLUG, compacted=False, prompt_tokens=tokens, limit=limit)
            return await inner(ctx, messages)

        earlier = [m for turn in older for m in turn]
        notes = [m for m in earlier if m.role in SYSTEM_ROLES]
        said = [m for m in earlier if m.role not in SYSTEM_ROLES]
        brief = await self._brief(ctx, window, transcript(said))
        summary = Message("system", SUMMARY.format(count=len(older), brief=brief))
        compacted = [*head, *notes, summary, *(m for turn in kept for m in turn)]
        after = message_tokens(compacted)
        ctx.reason(
            f"Summarised {len(older)} earlier turns into a brief of {count_tokens(brief)} "
            f"tokens; kept {len(kept)} recent turns ({tokens} -> {after} tokens).\n"
        )
        ctx.step(
            SLUG,
            compacted=True,
            prompt_tokens=tokens,
            limit=limit,
            summarised_turns=len(older),
            kept_turns=len(kept),
            compacted_tokens=after,
        )
        return await inner(ctx, compacted)

    async def _brief(self, ctx: RequestContext, window: int, turns: str) -> str:
        """The brief of `turns`: one call, or one per part when they do not fit in one."""
        template = brief_prompt("", "", 1, 1, self.config.brief_tokens)
        cap, left = notes_room(
            window, count_prompt_tokens(template), self.config.brief_tokens, 2, SLUG
        )
        parts = split(turns, left)
        ensure_budget(ctx, len(parts) + 1, SLUG, len(parts))
        sampling = helper_sampling(ctx.sampling, cap)
        brief = ""
        for number, part in enumerate(parts, start=1):
            (reply,) = await ctx.complete(
                brief_prompt(brief, part, number, len(parts), cap), sampling
            )
            brief = cut((reply.content or "").strip(), cap)
        return brief


def split_turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """The leading system messages, and the rest as turns: each from a user message up to the
    next (what comes before the first user message is a turn of its own)."""
    start = 0
    while start < len(messages) and messages[start].role in SYSTEM_ROLES:
        start += 1
    turns: list[list[Message]] = []
    for m in messages[start:]:
        if m.role == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return list(messages[:start]), turns


def recent(turns: Sequence[list[Message]], most: int, tokens: int) -> list[list[Message]]:
    """The last turns, at most `most` of them, within `tokens` tokens (the last one always)."""
    kept: list[list[Message]] = []
    total = 0
    for turn in reversed(turns):
        size = message_tokens(turn)
        if kept and (len(kept) == most or total + size > tokens):
            break
        kept.insert(0, turn)
        total += size
    return kept


def brief_prompt(brief: str, turns: str, number: int, parts: int, cap: int) -> list[Message]:
    """The call that writes (or, from the second part on, updates) the brief."""
    previous = BRIEF_PREVIOUS.format(brief=brief) if brief else ""
    part = f", part {number} of {parts}" if parts > 1 else ""
    return [
        Message("system", BRIEF_SYSTEM.format(cap=cap)),
        Message("user", BRIEF_USER.format(previous=previous, part=part, turns=turns)),
    ]
