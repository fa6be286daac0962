"""What the context plugins (`memory`, `compact`, `longcepo`) share: the backend's context
window, token counts, token-bounded chunks of a long text, a conversation as a transcript, the
long input and its question, and the answer prompt built from notes.

Tokens are counted with Ponder's tokenizer (`ponder.tokens`). The backend's own tokenizer may
count the same text differently, so the plugins plan for `usable()` of the window: a tenth is
kept as a margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field
from semantic_text_splitter import TextSplitter

from ponder.errors import BudgetExceeded, InvalidRequest
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import last_user_index, rewrite_last_user, with_system
from ponder.strategies.context import RequestContext
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Message

SYSTEM_ROLES = ("system", "developer")
MARGIN = 0.1
"""Share of the context window left unplanned, for the backend's tokenizer counting otherwise."""
SLACK = 16
"""Tokens a prompt template may grow by when its numbers get longer ("part 12 of 40")."""
MIN_CHUNK = 64
"""The fewest tokens of input worth one backend call."""
MIN_NOTES = 32
"""The fewest tokens of notes (a memory, a brief) worth writing: a window that cannot hold
them is too small for the plugin."""
DEFAULT_ANSWER_TOKENS = 1024
QUESTION_TOKENS = 512
"""Most tokens of the question taken from the end of the last user message."""

NOTES_BLOCK = "### {title}\n{intro}\n\n{notes}\n### End of {lower}"


class LongInputConfig(StrategyConfig):
    """The knobs `memory` and `longcepo` share: how a long input is cut and read."""

    context_window: int | None = Field(
        None,
        ge=256,
        le=10_000_000,
        description="Tokens one backend call holds (default: what the backend reports)",
    )
    chunk_tokens: int | None = Field(
        None,
        ge=64,
        le=1_000_000,
        description="Most tokens of input per part (default, and at most: what the window leaves)",
    )
    overlap_tokens: int = Field(
        64,
        ge=0,
        le=4096,
        description="Tokens each part repeats from the one before (at most under half a part)",
    )
    answer_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Tokens kept free for the answer when deciding whether the input fits "
        "(default: the request's max_tokens, else a quarter of the window up to 1024)",
    )
    question: str | None = Field(
        None,
        min_length=1,
        max_length=4000,
        description="What the reading is for (default: the last paragraph of the last user "
        "message)",
    )


def context_window(ctx: RequestContext, option: int | None, slug: str) -> int:
    """The tokens one backend call holds: the plugin's `context_window` option, else what the
    backend reports, else a 400 asking for the option."""
    if option is not None:
        return option
    known = ctx.backend.capabilities.context_window
    if known is None:
        raise InvalidRequest(
            f"the {slug} plugin needs the model's context window, which this backend does not "
            f'report: pass it as ponder: {{"{slug}": {{"context_window": TOKENS}}}}',
            param=f"ponder.{slug}.context_window",
        )
    return known


def usable(window: int) -> int:
    """The tokens of `window` a plugin plans for (less the margin)."""
    return int(window * (1 - MARGIN))


def answer_tokens(ctx: RequestContext, option: int | None, window: int) -> int:
    """Tokens kept free for the answer: the option, else the request's max_tokens, else a
    quarter of the window (at most DEFAULT_ANSWER_TOKENS)."""
    if option is not None:
        return option
    if ctx.sampling.max_tokens is not None:
        return ctx.sampling.max_tokens
    return min(DEFAULT_ANSWER_TOKENS, window // 4)


def message_tokens(messages: Sequence[Message]) -> int:
    """The prompt tokens of `messages`, their tool calls' names and arguments included."""
    calls = sum(
        count_tokens(c.name) + count_tokens(c.arguments) for m in messages for c in m.tool_calls
    )
    return count_prompt_tokens(messages) + calls


def fits(messages: Sequence[Message], window: int, answer: int) -> bool:
    """Whether `messages` and an answer of `answer` tokens fit in the usable window."""
    return message_tokens(messages) + answer <= usable(window)


def fit_cap(
    cap: int, spare: int, shares: int, window: int, slug: str, part: int = MIN_CHUNK
) -> int:
    """The tokens a plugin's notes may take: `cap`, where `shares` notes of it and a part of
    `part` tokens of input fit in the `spare` tokens its prompt leaves; else less, the notes and
    the part sharing what is spare alike (an option is an upper bound, the window a hard one).
    A 400 naming the window when that leaves fewer than MIN_NOTES."""
    if shares * cap + part <= spare:
        return cap
    fitted = spare // (shares + 1) if part else spare // shares
    if fitted < MIN_NOTES or spare - shares * fitted < part:
        raise InvalidRequest(
            f"the {slug} plugin cannot fit its prompt, notes of {MIN_NOTES} tokens and a part "
            f"of input within a context window of {window} tokens: raise context_window or "
            "shorten the question",
            param=f"ponder.{slug}.context_window",
        )
    return fitted


def notes_room(window: int, prompt: int, cap: int, shares: int, slug: str) -> tuple[int, int]:
    """The notes' cap (`fit_cap`) and the tokens of input left for one call whose prompt
    without the input takes `prompt` tokens and which carries `shares` notes (in and out)."""
    spare = usable(window) - prompt - SLACK
    fitted = fit_cap(cap, spare, shares, window, slug)
    return fitted, spare - shares * fitted


def chunk_size(option: int | None, left: int, overlap: int) -> tuple[int, int]:
    """The tokens of each part and of their overlap: the `chunk_tokens` option, at most `left`
    (what the window leaves), else `left`; the `overlap_tokens` option, at most under half a
    part."""
    size = left if option is None else min(option, left)
    return size, min(overlap, (size - 1) // 2)


def split(text: str, max_tokens: int, overlap: int = 0) -> list[str]:
    """`text` in parts of at most `max_tokens` tokens, cut at the largest boundaries that fit
    (paragraphs, then sentences, then words), each repeating up to `overlap` tokens of the
    one before."""
    splitter = TextSplitter.from_callback(count_tokens, max_tokens, overlap)
    return splitter.chunks(text)


def cut(text: str, max_tokens: int) -> str:
    """`text`, or its beginning up to a boundary within `max_tokens` tokens."""
    if count_tokens(text) <= max_tokens:
        return text
    parts = split(text, max_tokens)
    return parts[0] if parts else ""


def ensure_budget(ctx: RequestContext, calls: int, slug: str, parts: int) -> None:
    """Refuse before any call when the request's budget cannot cover `calls` backend calls."""
    limit = ctx.budget.max_backend_calls
    if limit is None or ctx.meter.calls + calls <= limit:
        return
    raise BudgetExceeded(
        f"the {slug} plugin reads this input in {parts} parts, which takes at least {calls} "
        f"backend calls; the request allows {limit - ctx.meter.calls}",
        param="ponder.max_backend_calls",
    )


def transcript(messages: Sequence[Message]) -> str:
    """The conversation as text, one block per message: its role, its tool calls, its text."""
    blocks: list[str] = []
    for m in messages:
        label = m.role if m.tool_call_id is None else f"tool result ({m.tool_call_id})"
        lines = [f"{label}: {m.text}" if m.text else f"{label}:"]
        lines += [f"[calls {c.name} ({c.id}) with {c.arguments}]" for c in m.tool_calls]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@dataclass(frozen=True, slots=True)
class LongInput:
    """A conversation read as one long text: its system prompt (kept verbatim), the text to
    read, the question the reading is for, and the user message that asked it."""

    head: tuple[Message, ...]
    document: str
    question: str
    asker: Message


def long_input(messages: Sequence[Message], question: str | None, slug: str) -> LongInput:
    """The leading system messages; the rest as the document (the last user message's text
    alone when it is all there is); the question: `question`, else the last paragraph of the
    last user message (its last QUESTION_TOKENS tokens)."""
    i = last_user_index(messages)
    if i < 0:
        raise InvalidRequest(
            f"the {slug} plugin needs a user message with the question", param="messages"
        )
    start = 0
    while start < len(messages) and messages[start].role in SYSTEM_ROLES:
        start += 1
    rest = messages[start:]
    document = rest[0].text if len(rest) == 1 else transcript(rest)
    asker = messages[i]
    if question is None:
        paragraphs = [p.strip() for p in asker.text.split("\n\n") if p.strip()]
        last = paragraphs[-1] if paragraphs else ""
        question = (
            split(last, QUESTION_TOKENS)[-1] if count_tokens(last) > QUESTION_TOKENS else last
        )
    return LongInput(tuple(messages[:start]), document, question, asker)


def answer_messages(long: LongInput, title: str, intro: str, notes: str) -> list[Message]:
    """What the rest of the route answers from: the system prompt with the notes in a labelled
    block after it, then the asking user message with the question as its text (its other
    parts, such as images, kept)."""
    block = NOTES_BLOCK.format(title=title, intro=intro, notes=notes, lower=title.lower())
    return [
        *with_system(long.head, block),
        *rewrite_last_user([long.asker], lambda _: long.question),
    ]
