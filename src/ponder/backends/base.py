"""The Backend protocol: what every model engine offers Ponder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ponder.types import Completion, Delta, Message, Sampling


@dataclass(frozen=True, slots=True)
class Capabilities:
    native_n: bool = False
    """One call can return several independent samples."""
    logprobs: bool = False
    tools: bool = False
    """The engine itself understands `tools` and returns structured `tool_calls`."""
    max_concurrency: int = 16
    """How many calls are worth running at once; strategies bound their fan-out by it."""
    json_schema: bool = False
    """The engine constrains decoding to `response_format` (json_object and json_schema), so
    what it writes has the document's shape (the `json` plugin still validates it)."""
    context_window: int | None = None
    """Tokens one call may hold, prompt and answer together; None when the backend does not
    know (plugins that fit long inputs into it then take it as an option)."""


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities

    async def models(self) -> list[str]:
        """Model ids this backend serves."""
        ...

    def serves(self, model: str) -> bool:
        """Whether `model` may be sent to this backend (remote backends accept any name)."""
        ...

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        """Return `n` choices. Raises `ponder.errors.BackendError` (or a subclass) on failure."""
        ...

    def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        """Yield deltas as tokens arrive; exactly one delta with `finish_reason` per choice,
        and a last delta with the call's `usage`."""
        ...

    async def ready(self) -> bool:
        """True when the backend can answer now."""
        ...

    async def aclose(self) -> None: ...
