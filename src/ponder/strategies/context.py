"""Per-request state handed to a strategy: the metered backend, the sink, the trace."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ponder.backends.assemble import Assembler
from ponder.backends.base import Backend
from ponder.types import Completion, Delta, Message, Sampling, Usage

Sink = Callable[[Delta], None]


@dataclass
class Meter:
    """Counts every backend call of one request and the tokens it cost."""

    calls: int = 0
    usage: Usage = field(default_factory=Usage)

    def record(self, usage: Usage) -> None:
        self.usage = self.usage + usage


@dataclass(frozen=True, slots=True)
class Step:
    """One entry of a request's trace."""

    name: str
    detail: Mapping[str, Any]
    at_s: float


@dataclass
class RequestContext:
    """Everything a strategy may use. Strategies never build clients or read globals.

    `complete()` is an intermediate sub-call; `final()` produces the answer the client sees,
    and streams it token by token when the client asked for a stream.
    """

    request_id: str
    model: str
    backend: Backend
    sampling: Sampling
    n: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    sink: Sink | None = None
    choice_index: int = 0
    meter: Meter = field(default_factory=Meter)
    trace: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def streaming(self) -> bool:
        return self.sink is not None

    def for_choice(self, index: int, n: int = 1) -> RequestContext:
        """A context for one of several concurrent runs: shares the meter and the trace."""
        return replace(self, choice_index=index, n=n)

    def step(self, name: str, **detail: Any) -> None:
        self.trace.append(Step(name, detail, round(time.monotonic() - self.started, 6)))

    async def complete(
        self, messages: Sequence[Message], sampling: Sampling | None = None, n: int = 1
    ) -> list[Completion]:
        self.meter.calls += 1
        choices = await self.backend.complete(self.model, messages, sampling or self.sampling, n)
        for c in choices:
            self.meter.record(c.usage)
        return choices

    async def final(
        self, messages: Sequence[Message], sampling: Sampling | None = None, n: int = 1
    ) -> list[Completion]:
        if self.sink is None:
            return await self.complete(messages, sampling, n)
        self.meter.calls += 1
        assembler = Assembler(n)
        sink = self.sink
        offset = self.choice_index
        async for delta in self.backend.stream(self.model, messages, sampling or self.sampling, n):
            assembler.add(delta)
            if delta.usage is not None:
                self.meter.record(delta.usage)
            else:
                sink(replace(delta, index=delta.index + offset))
        return assembler.completions()
