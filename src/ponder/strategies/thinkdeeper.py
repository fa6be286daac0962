"""`thinkdeeper`: budget forcing (Muennighoff et al. 2025, "s1: Simple test-time scaling",
arXiv:2501.19393). The model thinks between `<think>` and `</think>` before it answers, and the
length of that thinking is held between two bounds:

- when it closes its thinking before `min_thinking_tokens`, the end is replaced with "Wait"
  and it goes on from there (at most `max_waits` times);
- at `max_thinking_tokens` its thinking is cut, `</think>` is written after it, and the answer
  is generated from that point.

Every call continues the assistant's answer from what has been written so far (`<think>`, the
thinking, each "Wait"), so the backend must continue a given start (`Capabilities.continuation`;
elsewhere a 400). A model whose chat template has the `<think>` format (`Capabilities.thinking`)
is only given the opening tag; others are first told to think between the tags and then answer
(`instruct` decides either way).

Calls: one per stretch of thinking (1 + the "Wait"s), then the answer. The thinking streams as
reasoning while it is written and comes back as `reasoning_content`; the answer streams as
content. The thinking calls' tokens count as reasoning tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from ponder.backends.assemble import Assembler
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import text_sampling, with_system
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

OPEN = "<think>"
CLOSE = "</think>"
INSTRUCTIONS = (
    f"Think the problem through first, step by step, between {OPEN} and {CLOSE}. Then, after "
    f"{CLOSE}, write your answer."
)


class ThinkDeeperConfig(StrategyConfig):
    min_thinking_tokens: int = Field(
        256,
        ge=0,
        le=32768,
        description="Thinking that ends sooner is made to go on (never past the cap)",
    )
    max_thinking_tokens: int = Field(
        2048, ge=1, le=32768, description="Thinking is cut here and the answer written"
    )
    wait: str = Field(
        "Wait", min_length=1, max_length=64, description="What replaces an early end of thinking"
    )
    max_waits: int = Field(
        8, ge=0, le=64, description="How many times an early end is replaced at most"
    )
    instruct: bool | None = Field(
        None,
        description="Tell the model to think between <think> and </think> first (default: "
        "unless the backend says its model does so by itself)",
    )


End = Literal["closed", "cut"]


class ThinkDeeper:
    slug: ClassVar[str] = "thinkdeeper"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ThinkDeeperConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ThinkDeeperConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        config = self.config
        ctx.require("continuation")
        instruct = config.instruct
        if instruct is None:
            instruct = not ctx.backend.capabilities.thinking
        prompt = with_system(messages, INSTRUCTIONS) if instruct else list(messages)
        start = OPEN + "\n"
        thinking = ""
        used = waits = 0
        end: End = "cut"
        while used < config.max_thinking_tokens:
            piece, closed, tokens = await self._think(
                ctx, prompt, start + thinking, config.max_thinking_tokens - used
            )
            thinking += piece
            used += tokens
            ctx.step("thinking", tokens=tokens, total=used, closed=closed)
            if not closed:
                if tokens <= 0:
                    break  # the backend wrote nothing more: cut here
                continue  # cut at the call's limit: go on to the cap
            floor = min(config.min_thinking_tokens, config.max_thinking_tokens)
            if used < floor and waits < config.max_waits:
                forced = _joined(thinking, config.wait)
                if ctx.sink is not None:
                    ctx.reason(forced[len(thinking) :])
                thinking = forced
                waits += 1
                ctx.step("wait", at_tokens=used)
                continue
            end = "closed"
            break
        ctx.step("thought", tokens=used, waits=waits, end=end)
        answer_start = start + _closed(thinking)
        (answer,) = await ctx.final_from(prompt, answer_start)
        return [replace(answer, reasoning=_joined_reasoning(answer.reasoning, thinking))]

    async def _think(
        self, ctx: RequestContext, prompt: Sequence[Message], start: str, room: int
    ) -> tuple[str, bool, int]:
        """One stretch of thinking after `start`, at most `room` tokens: its text (without the
        closing tag), whether the model closed its thinking (or ended its turn) rather than
        running out of tokens, and the tokens it cost. Streamed as reasoning when the client
        streams."""
        sampling = text_sampling(ctx.sampling, room).with_(stop=(CLOSE,))
        if ctx.sink is None:
            (out,) = await ctx.continue_from(prompt, start, sampling)
        else:
            assembler = Assembler()
            held = ""
            shown = 0  # characters of the text streamed so far
            async for delta in ctx.stream_from(prompt, start, sampling):
                assembler.add(delta)
                if delta.content and CLOSE not in held:
                    held += delta.content
                    safe = _safe(held)
                    ctx.reason(held[shown:safe])
                    shown = max(shown, safe)
            (out,) = assembler.completions()
            ctx.reason(_thought(out)[0][shown:])  # what was held back for a tag that never came
        piece, closed = _thought(out)
        return piece, closed, out.usage.completion_tokens


def _thought(out: Completion) -> tuple[str, bool]:
    """A thinking call's text up to the closing tag, and whether the thinking ended there (or
    with the turn) rather than at the token limit."""
    text = out.content or ""
    cut = text.find(CLOSE)
    if cut >= 0:
        return text[:cut], True
    return text, out.finish_reason != "length"


def _safe(text: str) -> int:
    """How much of `text` may be shown as thinking: up to a closing tag, and not an end that
    may be the start of one."""
    cut = text.find(CLOSE)
    if cut >= 0:
        return cut
    for n in range(min(len(CLOSE) - 1, len(text)), 0, -1):
        if text.endswith(CLOSE[:n]):
            return len(text) - n
    return len(text)


def _joined(thinking: str, word: str) -> str:
    """The thinking with `word` after it, on a new line unless it ends with a space already."""
    if not thinking or thinking[-1].isspace():
        return thinking + word
    return f"{thinking}\n{word}"


def _closed(thinking: str) -> str:
    """The thinking, closed: the answer follows."""
    return thinking + ("" if thinking.endswith("\n") else "\n") + CLOSE + "\n\n"


def _joined_reasoning(backend_reasoning: str | None, thinking: str) -> str | None:
    """The answer's reasoning: the thinking, then whatever reasoning the backend gave with the
    answer itself."""
    parts = [p for p in (thinking.strip(), backend_reasoning) if p]
    return "\n\n".join(parts) or None
