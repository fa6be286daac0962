"""`cot_reflection`: chain of thought with reflection, in one generation. The model thinks step
by step inside `<thinking>`, checks that reasoning inside `<reflection>`, and writes the final
answer alone inside `<output>`. The client gets the output section as the answer; the thinking
and reflection come back as reasoning (`reasoning_content`), streamed live as they are written.

One backend call. Parsing is done by `TagSplitter`, which reads the text incrementally (tags
may be split across stream deltas) and gives the same result however the text is cut:

- The answer is the first `<output>` section, trimmed; text after `</output>` is ignored. An
  `<output>` that is never closed runs to the end of the text.
- A section whose closing tag follows its opening tag directly ("<output></output>", as a
  small model copying the format writes it, with the content after) is not empty: its closing
  tag is ignored, so the text after it is the section's, up to the next tag.
- Without an (non-empty) output section the answer is the text outside the thinking and
  reflection sections, trimmed; when that is empty too, the reasoning (below), without its
  tags; and when that is empty, the whole text, trimmed. While streaming, text outside any
  section is held back until the end, since it only becomes the answer when no output section
  comes. (On GSM8K the 1.5B opened `<thinking>`, solved the problem in it and stopped, in 28 of
  50 replies: the client got the solution with a bare `<thinking>` tag at its head.)
- The reasoning is the thinking and reflection sections, each trimmed, joined by blank lines
  (a reflection nested inside the thinking counts as its own section).

Option `keep_reasoning` (default true): whether the client gets the thinking and reflection at
all, in `message.reasoning_content` (non-streamed) or as `delta.reasoning_content` (streamed;
`ponder: {"reasoning": false}` turns that off too). With false, only the answer is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from ponder.backends.assemble import Assembler
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import with_system
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Delta, Message

INSTRUCTIONS = (
    "Answer in three parts, using these tags exactly:\n"
    "1. Inside <thinking></thinking>, work through the problem step by step.\n"
    "2. Inside <reflection></reflection>, check that reasoning: redo each calculation and "
    "compare it with the request. If it holds, say so in one sentence and keep your answer; "
    "change it only for a mistake you can point to.\n"
    "3. Inside <output></output>, give only the final answer to the user's request, complete "
    "and self-contained, with no reference to your thinking.\n"
    "Write nothing outside these three sections."
)
"""Read literally by a small model, which may write the tags back to back and the content after
them: the parser takes that text as the section's. Showing the format as it is to be written
was tried and dropped: the 1.5B then wrote the tags right but kept its thinking short, and
scored 40% against this prompt's 56% on GSM8K (benchmarks/RESULTS.md). Asked to check "for
errors, gaps or wrong assumptions", it found some whether or not there were any, and talked
itself out of right answers (item 105: 500 pieces worked out, then "the problem does not
specify that her mom places a third", then 333): the reflection now redoes the calculations
and keeps an answer that holds (on 16 probe items, 8 right against 6)."""

SECTION_SEPARATOR = "\n\n"

Kind = Literal["reasoning", "output"]
State = Literal["outside", "reasoning", "output", "done"]

_REASONING_NAMES = ("thinking", "reflection")
_OPEN_REASONING = tuple(f"<{name}>" for name in _REASONING_NAMES)
_CLOSE_REASONING = tuple(f"</{name}>" for name in _REASONING_NAMES)
_OPEN_OUTPUT = "<output>"
_CLOSE_OUTPUT = "</output>"
_OPENING = (*_OPEN_REASONING, _OPEN_OUTPUT)
_CLOSING = (*_CLOSE_REASONING, _CLOSE_OUTPUT)

_LONGEST_TAG = max(len(t) for t in (*_OPEN_REASONING, *_CLOSE_REASONING, _CLOSE_OUTPUT))

_TAGS: dict[State, tuple[str, ...]] = {
    "outside": (*_OPEN_REASONING, *_CLOSE_REASONING, _OPEN_OUTPUT, _CLOSE_OUTPUT),
    "reasoning": (*_OPEN_REASONING, *_CLOSE_REASONING, _OPEN_OUTPUT, _CLOSE_OUTPUT),
    "output": (_CLOSE_OUTPUT,),
    "done": (),
}


@dataclass(frozen=True, slots=True)
class Piece:
    kind: Kind
    text: str


class TagSplitter:
    """Splits a generation, fed in any pieces, into reasoning and output text.

    `feed()` and `finish()` return the new `Piece`s as soon as they are certain: a possible tag
    prefix ("<out") waits for the next piece, and whitespace at the end of a section waits
    until more text of that section follows (so sections come out trimmed). Text outside any
    section is collected in `untagged`. Tags are matched case-insensitively.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._state: State = "outside"
        self._depth = 0  # nesting of reasoning sections
        self._just_opened = False  # the last thing read was an opening tag (or blanks after it)
        self._section_start = True
        self._pending_ws = ""
        self._untagged: list[str] = []
        self._raw: list[str] = []
        self._output: list[str] = []
        self._reasoning: list[str] = []

    # ---- results ---------------------------------------------------------------------------

    @property
    def output(self) -> str:
        """The output section's text so far (trimmed)."""
        return "".join(self._output)

    @property
    def reasoning(self) -> str:
        """The thinking and reflection sections so far (each trimmed, blank-line separated)."""
        return "".join(self._reasoning)

    @property
    def untagged(self) -> str:
        """The text outside every section, as written."""
        return "".join(self._untagged)

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._raw)

    def answer(self) -> str:
        """The answer: the output section, else the text outside the reasoning sections, else
        the reasoning, else the whole text; trimmed. Meaningful after `finish()`."""
        return self.output or self.untagged.strip() or self.reasoning or self.text.strip()

    # ---- feeding ---------------------------------------------------------------------------

    def feed(self, text: str) -> list[Piece]:
        self._raw.append(text)
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[Piece]:
        pieces = self._drain(final=True)
        self._end_section()
        return pieces

    def _drain(self, *, final: bool) -> list[Piece]:
        out: list[Piece] = []
        buf = self._buffer
        i = 0
        while i < len(buf):
            lt = buf.find("<", i)
            if lt < 0:
                self._text(buf[i:], out)
                i = len(buf)
                break
            self._text(buf[i:lt], out)
            i = lt
            rest = buf[lt : lt + _LONGEST_TAG].lower()
            tags = _TAGS[self._state]
            tag = next((t for t in tags if rest.startswith(t)), None)
            if tag is not None:
                self._tag(tag)
                i += len(tag)
            elif not final and any(t.startswith(rest) for t in tags):
                break  # maybe a tag split across pieces: wait for more text
            else:
                self._text("<", out)
                i += 1
        self._buffer = buf[i:]
        return out

    def _tag(self, tag: str) -> None:
        state = self._state
        just_opened, self._just_opened = self._just_opened, tag in _OPENING
        if just_opened and tag in _CLOSING:
            return  # "<output></output>": the section's content follows its closing tag
        if tag == _OPEN_OUTPUT:
            self._enter("output")
        elif tag == _CLOSE_OUTPUT:
            if state == "output":
                self._end_section()
                self._state = "done"
            # a stray closing tag elsewhere is dropped
        elif tag in _OPEN_REASONING:
            self._depth = self._depth + 1 if state == "reasoning" else 1
            self._enter("reasoning")
        elif state == "reasoning":  # a closing reasoning tag
            self._depth -= 1
            self._enter("reasoning" if self._depth > 0 else "outside")

    def _enter(self, state: State) -> None:
        self._end_section()
        if state != "reasoning":
            self._depth = 0
        self._state = state

    def _end_section(self) -> None:
        self._section_start = True
        self._pending_ws = ""

    def _text(self, text: str, out: list[Piece]) -> None:
        if not text:
            return
        if not text.isspace():
            self._just_opened = False
        state = self._state
        if state == "outside":
            self._untagged.append(text)
            return
        if state == "done":
            return
        kind: Kind = "output" if state == "output" else "reasoning"
        if self._section_start:
            text = text.lstrip()
            if not text:
                return
            self._section_start = False
            if kind == "reasoning" and self._reasoning:  # not the first reasoning section
                text = SECTION_SEPARATOR + text
        text = self._pending_ws + text
        kept = text.rstrip()
        self._pending_ws = text[len(kept) :]
        if kept:
            (self._output if kind == "output" else self._reasoning).append(kept)
            out.append(Piece(kind, kept))


class CoTReflectionConfig(StrategyConfig):
    keep_reasoning: bool = Field(
        True,
        description="Return the thinking and reflection to the client as reasoning_content",
    )


class CoTReflection:
    slug: ClassVar[str] = "cot_reflection"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = CoTReflectionConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, CoTReflectionConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        prompt = with_system(messages, INSTRUCTIONS)
        splitter = TagSplitter()
        if ctx.sink is None:
            (raw,) = await ctx.complete(prompt)
            splitter.feed(raw.content or "")
            splitter.finish()
        else:
            raw = await self._stream(ctx, prompt, splitter)
        answer = splitter.answer()
        ctx.step(
            "cot_reflection",
            tagged_output=bool(splitter.output),
            reasoning_chars=len(splitter.reasoning),
        )
        reasoning = ""
        if self.config.keep_reasoning:
            reasoning = SECTION_SEPARATOR.join(r for r in (raw.reasoning, splitter.reasoning) if r)
        return [
            Completion(
                content=answer if answer or not raw.tool_calls else None,
                finish_reason=raw.finish_reason,
                tool_calls=raw.tool_calls,
                usage=raw.usage,
                reasoning=reasoning or None,
            )
        ]

    async def _stream(
        self, ctx: RequestContext, prompt: Sequence[Message], splitter: TagSplitter
    ) -> Completion:
        """Stream the generation live: reasoning sections as reasoning, the output section as
        content; then the fallback answer when no output section came, then the finish."""
        assembler = Assembler()
        keep = self.config.keep_reasoning
        spoke = False
        async for delta in ctx.stream(prompt):
            assembler.add(delta)
            if delta.usage is not None:
                continue
            if delta.reasoning and keep:
                ctx.reason(delta.reasoning)
            if delta.content:
                spoke = _send(ctx, splitter.feed(delta.content), keep) or spoke
            if delta.tool_calls:
                ctx.emit(Delta(tool_calls=delta.tool_calls))
        spoke = _send(ctx, splitter.finish(), keep) or spoke
        if not spoke:
            answer = splitter.answer()
            if answer:
                ctx.emit(Delta(content=answer))
        (raw,) = assembler.completions()
        ctx.emit(Delta(finish_reason=raw.finish_reason))
        return raw


def _send(ctx: RequestContext, pieces: Sequence[Piece], reasoning: bool) -> bool:
    """Stream the pieces (the reasoning ones only with `reasoning`); whether any of them was
    answer text."""
    spoke = False
    for piece in pieces:
        if piece.kind == "output":
            ctx.emit(Delta(content=piece.text))
            spoke = True
        elif reasoning:
            ctx.reason(piece.text)
    return spoke
