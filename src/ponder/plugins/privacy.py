"""`privacy`, a plugin: personal data never reaches the backend. Names, e-mail addresses, phone
numbers, addresses, card, bank and national id numbers, IP addresses... are found with
Presidio (a spaCy English pipeline and its recognizers, `ponder.plugins.privacy_detect`) and
replaced by placeholders such as `<PERSON_1>` (the same value, the same placeholder, throughout
the request); the answer gets the original values back.

- Every message is masked, of every role: the system prompt, earlier turns, tool results, text
  parts, tool call arguments. So is every later call of the rest of the route (`sc`'s samples,
  a critique quoting a draft...): the backend it runs on masks each call's messages, and each
  distinct text is analysed once per request.
- When something was masked, a line after the system prompt tells the model to write the
  placeholders as they are.
- The answer is restored in the returned choices and in the stream, answer and reasoning
  alike: a placeholder split across stream pieces is restored whole, only a tail that may be
  the start of one being held back.
- The mapping lives as long as the request: never logged, stored or traced. The trace says how
  many values of each type were masked; errors carry only what the backend saw.

Knobs: `entities` (which types; dates, URLs and UUIDs are not masked unless asked) and
`threshold` (the least detection score). The server needs the `privacy` extra; without it
the request is refused before any backend call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from ponder.backends.base import Backend, Capabilities
from ponder.plugins.base import Inner
from ponder.plugins.privacy_detect import (
    DEFAULT_ENTITIES,
    ENTITIES,
    SETTING,
    Detectors,
    Entity,
)
from ponder.plugins.privacy_mask import (
    Masker,
    StreamKey,
    StreamRestorer,
    Vault,
    restore_completion,
)
from ponder.plugins.resources import resource
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import with_system
from ponder.strategies.context import RequestContext, Sink
from ponder.types import Completion, Delta, Message, Sampling, ToolCallDelta

SLUG = "privacy"

NOTE = (
    "Personal data in this conversation has been replaced by placeholders in angle brackets, "
    "such as <PERSON_1>. Where you mean the value a placeholder stands for, write the "
    "placeholder exactly as it is."
)


class PrivacyConfig(StrategyConfig):
    entities: tuple[Entity, ...] = Field(
        DEFAULT_ENTITIES,
        min_length=1,
        max_length=len(ENTITIES),
        description="Which types of personal data are masked (default: all but DATE_TIME, "
        "URL and UUID)",
    )
    threshold: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Least detection score (0..1) of a masked value; higher masks less",
    )


class Privacy:
    slug: ClassVar[str] = SLUG
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = PrivacyConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, PrivacyConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        detector = await resource(ctx, SLUG, Detectors, SETTING).detector()
        masker = Masker(detector, self.config.entities, self.config.threshold)
        masked = await masker.messages(messages)
        counts = masker.vault.counts()
        ctx.step("privacy", masked=counts)
        ctx.reason(_summary(counts))
        if counts:
            masked = with_system(masked, NOTE)
            masker.known(masked[0].text)

        sink = RestoringSink(ctx.sink, masker.vault) if ctx.sink is not None else None
        backend = MaskingBackend(ctx.backend, masker)
        choices = await inner(replace(ctx, backend=backend, sink=sink), masked)
        if sink is not None:
            sink.flush()

        if masker.vault.counts() != counts:
            ctx.step("privacy_calls", masked=masker.vault.counts())
        return [restore_completion(c, masker.vault) for c in choices]


def _summary(counts: dict[str, int]) -> str:
    if not counts:
        return "Found no personal data to mask.\n"
    kinds = ", ".join(f"{entity} x{count}" for entity, count in counts.items())
    return f"Masked personal data before the model sees it: {kinds}.\n"


class MaskingBackend:
    """The request's backend, masking the messages of every call."""

    def __init__(self, backend: Backend, masker: Masker) -> None:
        self._backend = backend
        self._masker = masker
        self.name = backend.name
        self.capabilities: Capabilities = backend.capabilities

    async def models(self) -> list[str]:
        return await self._backend.models()

    def serves(self, model: str) -> bool:
        return self._backend.serves(model)

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        masked = await self._masker.messages(messages)
        return await self._backend.complete(model, masked, sampling, n)

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        masked = await self._masker.messages(messages)
        async for delta in self._backend.stream(model, masked, sampling, n):
            yield delta

    async def ready(self) -> bool:
        return await self._backend.ready()

    async def aclose(self) -> None:
        """Nothing: the server's backend outlives the request."""


class RestoringSink:
    """The client's sink, given the original values back: in the answer, the reasoning and
    tool call arguments of each choice."""

    def __init__(self, sink: Sink, vault: Vault) -> None:
        self._sink = sink
        self._stream = StreamRestorer(vault)

    def __call__(self, delta: Delta) -> None:
        i = delta.index
        if delta.content or delta.tool_calls:  # the reasoning held back goes first
            held = self._stream.flush((i, "reasoning", 0))
            if held:
                self._send(Delta(index=i, reasoning=held))
        content = self._feed((i, "content", 0), delta.content)
        reasoning = self._feed((i, "reasoning", 0), delta.reasoning)
        calls = [
            replace(c, arguments=self._feed((i, "tool", c.index), c.arguments))
            for c in delta.tool_calls
        ]
        if delta.finish_reason is not None:  # the end of the choice: nothing more is held
            content = (content or "") + self._stream.flush((i, "content", 0))
            reasoning = (reasoning or "") + self._stream.flush((i, "reasoning", 0))
            calls += [
                ToolCallDelta(key[2], arguments=self._stream.flush(key))
                for key in self._stream.held()
                if key[:2] == (i, "tool")
            ]
        self._send(
            replace(
                delta,
                content=content or None,
                reasoning=reasoning or None,
                tool_calls=tuple(c for c in calls if c.id or c.name or c.arguments or c.type),
            )
        )

    def flush(self) -> None:
        """Send what is still held (of choices whose stream ended without a finish)."""
        for key in self._stream.held():
            text = self._stream.flush(key)
            index, channel, call = key
            if channel == "content":
                self._send(Delta(index=index, content=text))
            elif channel == "reasoning":
                self._send(Delta(index=index, reasoning=text))
            else:
                self._send(Delta(index=index, tool_calls=(ToolCallDelta(call, arguments=text),)))

    def _feed(self, key: StreamKey, piece: str | None) -> str | None:
        return self._stream.feed(key, piece) if piece else piece

    def _send(self, delta: Delta) -> None:
        if (
            delta.content
            or delta.reasoning
            or delta.tool_calls
            or delta.finish_reason is not None
            or delta.usage is not None
            or delta.logprobs
        ):
            self._sink(delta)
