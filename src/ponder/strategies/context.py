"""Per-request state handed to a strategy: the metered backend, the budget, the sink, the trace.

Everything a strategy does with the model goes through a `RequestContext`:

- `complete()` is one intermediate sub-call; `sample()` draws k independent samples at once
  (native `n` where the backend has it, else concurrent calls); `final()` produces the answer
  the client sees and streams it token by token when the client asked for a stream.
- `continue_from()`, `stream_from()` and `final_from()` do the same from a given start of the
  assistant's answer (where the backend can: `Capabilities.continuation`); `next_tokens()`
  gives the model's most likely next tokens after such a start, with their log-probabilities.
- `reason()` streams a line of the strategy's working as `delta.reasoning_content`.
- `step()` adds an entry to the trace (`ponder: {"trace": true}`).

Every call is counted by the shared `Meter`, checked against the `Budget` (both in
`ponder.strategies.accounting`), and bounded by a per-request semaphore sized from the
backend's `max_concurrency`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ponder.backends.assemble import Assembler
from ponder.backends.base import Backend, continuation_call
from ponder.errors import BudgetExceeded, PonderError, Unsupported
from ponder.strategies.accounting import Budget, CallRecord, Meter, Step
from ponder.strategies.tools import BUILTIN_TOOLS, Tool
from ponder.types import Completion, Delta, Message, Sampling, Usage

if TYPE_CHECKING:
    from ponder.spl_store import Store
    from ponder.tracing import CallSpan, Tracing

T = TypeVar("T")

Sink = Callable[[Delta], None]

__all__ = ["Budget", "CallRecord", "Meter", "RequestContext", "Sink", "Step", "gather"]


@dataclass
class RequestContext:
    """Everything a strategy may use. Strategies never build clients or read globals.

    Contexts made by `for_choice()` share the meter, budget, semaphore and trace, so the
    request's totals cover every run.
    """

    request_id: str
    model: str
    backend: Backend
    sampling: Sampling
    n: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    sink: Sink | None = None
    choice_index: int = 0
    budget: Budget = field(default_factory=Budget)
    meter: Meter = field(default_factory=Meter)
    trace: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    limiter: asyncio.Semaphore | None = None
    tenant: str = "default"
    """Whose knowledge (SPL strategies, memories) this request may read and change."""
    may_learn: bool = True
    """Whether this request may change the tenant's knowledge (the key's `learning`)."""
    store: Store | None = None
    """The SPL and memory store, for the strategies that keep knowledge."""
    tools: Mapping[str, Tool] = field(default_factory=lambda: dict(BUILTIN_TOOLS))
    """The tools this server offers strategies (the optional ones only where turned on)."""
    resources: Mapping[str, object] = field(default_factory=dict)
    """What the server lends its plugins, by name (`ponder.plugins.resources`)."""
    tracing: Tracing | None = None
    """OpenTelemetry spans for each backend call, and events for each step (None: off)."""
    calls: list[CallRecord] | None = None
    """Where every backend call is kept when the server keeps a conversation log; None: not
    kept."""
    working: list[tuple[int, str]] | None = None
    """Where a request that is not streamed keeps the strategy's working, as (choice, text),
    for the front ends that return it whole; None: not kept."""

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = asyncio.Semaphore(max(1, self.backend.capabilities.max_concurrency))

    @property
    def shows_reasoning(self) -> bool:
        """Whether the strategy's working streams to the client (off with
        `ponder: {"reasoning": false}`, and when the client is not streaming)."""
        return self.sink is not None and bool(self.options.get("reasoning", True))

    def for_choice(self, index: int, n: int = 1) -> RequestContext:
        """A context for one of several concurrent runs: shares the meter and the trace."""
        return replace(self, choice_index=index, n=n)

    def require(self, *capabilities: str) -> None:
        """Raise Unsupported (400) naming the `Capabilities` flags this strategy needs that the
        backend lacks (e.g. "continuation", "logprobs")."""
        caps = self.backend.capabilities
        missing = [c for c in capabilities if not getattr(caps, c)]
        if missing:
            raise Unsupported(
                f"this strategy needs a backend with {' and '.join(missing)}, which the "
                f"{self.backend.name} backend does not declare",
                param="model",
            )

    def require_store(self) -> Store:
        if self.store is None:
            raise Unsupported("this strategy needs the SPL store, which this server has not set up")
        return self.store

    # ---- trace and live reasoning ----------------------------------------------------------

    def step(self, name: str, **detail: Any) -> None:
        self.trace.append(Step(name, detail, round(time.monotonic() - self.started, 6)))
        if self.tracing is not None:
            self.tracing.step(name, detail)

    def reason(self, text: str) -> None:
        """Stream `text` as reasoning of this choice (unless `ponder: {"reasoning": false}`), or
        keep it in `working` when the request is not streamed and its front end asked."""
        if not text or not self.options.get("reasoning", True):
            return
        if self.sink is not None:
            self.sink(Delta(index=self.choice_index, reasoning=text))
        elif self.working is not None:
            self.working.append((self.choice_index, text))

    def emit(self, delta: Delta) -> None:
        """Send a delta of this choice's answer to the client (when streaming)."""
        if self.sink is not None:
            self.sink(replace(delta, index=delta.index + self.choice_index))

    # ---- backend calls ---------------------------------------------------------------------

    def _charge(self) -> None:
        limit = self.budget.max_backend_calls
        if limit is not None and self.meter.calls >= limit:
            raise BudgetExceeded(
                f"the strategy needs more than max_backend_calls={limit} backend calls",
                param="ponder.max_backend_calls",
            )
        self.meter.calls += 1

    async def complete(
        self, messages: Sequence[Message], sampling: Sampling | None = None, n: int = 1
    ) -> list[Completion]:
        """One backend call returning `n` choices (ask `sample()` for independent samples)."""
        self._charge()
        assert self.limiter is not None
        started = time.monotonic()
        span = self._span(messages, sampling or self.sampling, n)
        async with self.limiter:
            try:
                choices = await self.backend.complete(
                    self.model, messages, sampling or self.sampling, n
                )
            except BaseException as exc:
                if isinstance(exc, PonderError):
                    self._keep(messages, [], Usage(), started, streamed=False, error=exc)
                if span is not None:
                    span.end_with(exc)
                raise
        usage = sum((c.usage for c in choices), Usage())
        if span is not None:
            span.end(choices, usage)
        self.meter.record(usage)
        self._keep(messages, choices, usage, started, False)
        return choices

    def _keep(
        self,
        messages: Sequence[Message],
        choices: Sequence[Completion],
        usage: Usage,
        started: float,
        streamed: bool,
        error: PonderError | None = None,
    ) -> None:
        """Add a call to `calls`, when the conversation log keeps them."""
        if self.calls is None:
            return
        now = time.monotonic()
        self.calls.append(
            CallRecord(
                tuple(messages),
                tuple(choices),
                usage,
                round(started - self.started, 6),
                round(now - started, 6),
                streamed,
                None if error is None else f"{error.code or error.type}: {error.message}",
            )
        )

    async def sample(
        self,
        messages: Sequence[Message],
        k: int,
        sampling: Sampling | None = None,
        *,
        tolerate_failures: bool = False,
    ) -> list[Completion]:
        """`k` independent samples, drawn concurrently: one call with native `n` when the
        backend has it (topped up with single calls if it returned fewer), else `k` calls.

        With `tolerate_failures`, failed calls are dropped and the survivors returned; only
        when every call fails is the first failure raised.
        """
        if k <= 0:
            return []
        if k > 1 and self.backend.capabilities.native_n:
            got = await self.complete(messages, sampling, n=k)
            if len(got) >= k:
                return got[:k]
            return got + await self.sample(
                messages, k - len(got), sampling, tolerate_failures=tolerate_failures
            )
        calls = [self.complete(messages, sampling) for _ in range(k)]
        if not tolerate_failures:
            return [c for (c,) in await gather(calls)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        survivors = [r[0] for r in results if isinstance(r, list)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if not survivors:
            raise failures[0]
        for failure in failures:
            if not isinstance(failure, PonderError):
                raise failure  # a bug, not a backend failure: never swallowed
        if failures:
            self.step("samples_failed", count=len(failures), error=str(failures[0]))
        return survivors

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling | None = None, n: int = 1
    ) -> AsyncIterator[Delta]:
        """One streamed backend call, metered: its deltas, the last one carrying the usage."""
        self._charge()
        assert self.limiter is not None
        started = time.monotonic()
        span = self._span(messages, sampling or self.sampling, n)
        kept = Assembler(n) if self.calls is not None or span is not None else None
        error: BaseException | None = None
        try:
            async with self.limiter:
                async for delta in self.backend.stream(
                    self.model, messages, sampling or self.sampling, n
                ):
                    if delta.usage is not None:
                        self.meter.record(delta.usage)
                    if kept is not None:
                        kept.add(delta)
                    yield delta
        except BaseException as exc:
            error = exc
            raise
        finally:
            if kept is not None:  # also a stream cut short: what it said until then
                usage = kept.usage or Usage()
                said = kept.completions()
                failure = error if isinstance(error, PonderError) else None
                self._keep(messages, said, usage, started, True, failure)
                if span is not None:
                    if error is None:
                        span.end(said, usage)
                    else:
                        span.end_with(error)

    def _span(self, messages: Sequence[Message], sampling: Sampling, n: int) -> CallSpan | None:
        """A span for one backend call, when tracing is on."""
        if self.tracing is None:
            return None
        return self.tracing.call(self.model, messages, sampling, n)

    async def final(
        self, messages: Sequence[Message], sampling: Sampling | None = None, n: int = 1
    ) -> list[Completion]:
        """The answer-producing call: streamed to the client when it asked for a stream."""
        if self.sink is None:
            return await self.complete(messages, sampling, n)
        assembler = Assembler(n)
        async for delta in self.stream(messages, sampling, n):
            assembler.add(delta)
            if delta.usage is None:
                self.emit(delta)
        return assembler.completions()

    # ---- continuing the assistant's answer from a prefix ----------------------------------

    def _continuation(
        self, messages: Sequence[Message], prefix: str, sampling: Sampling | None
    ) -> tuple[list[Message], Sampling]:
        self.require("continuation")
        return continuation_call(messages, prefix, sampling or self.sampling)

    async def continue_from(
        self,
        messages: Sequence[Message],
        prefix: str,
        sampling: Sampling | None = None,
        n: int = 1,
    ) -> list[Completion]:
        """One backend call that continues the assistant's answer to `messages` from `prefix`
        (the answer's first words, no end of turn): the choices hold only what follows it.
        Raises Unsupported where the backend cannot continue."""
        chat, continued = self._continuation(messages, prefix, sampling)
        return await self.complete(chat, continued, n)

    async def stream_from(
        self,
        messages: Sequence[Message],
        prefix: str,
        sampling: Sampling | None = None,
        n: int = 1,
    ) -> AsyncIterator[Delta]:
        """`continue_from`, streamed (as `stream()`)."""
        chat, continued = self._continuation(messages, prefix, sampling)
        async for delta in self.stream(chat, continued, n):
            yield delta

    async def final_from(
        self,
        messages: Sequence[Message],
        prefix: str,
        sampling: Sampling | None = None,
        n: int = 1,
    ) -> list[Completion]:
        """`continue_from` as the answer-producing call: the continuation streams to the
        client when it asked for a stream (as `final()`)."""
        chat, continued = self._continuation(messages, prefix, sampling)
        return await self.final(chat, continued, n)

    async def next_tokens(
        self,
        messages: Sequence[Message],
        prefix: str,
        k: int,
        sampling: Sampling | None = None,
    ) -> list[tuple[str, float]]:
        """The `k` most likely tokens to follow `prefix` in the assistant's answer, as (text,
        log-probability), most likely first: one call for one token with `k` alternatives.
        Empty when the backend reported none (the embedded engine reports none when the most
        likely next token ends the turn). Raises Unsupported without continuation or
        log-probabilities."""
        self.require("continuation", "logprobs")
        probe = (sampling or self.sampling).with_(
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=k,
            stop=(),
            tools=(),
            tool_choice=None,
            response_format=None,
        )
        (choice,) = await self.continue_from(messages, prefix, probe)
        entries = (choice.logprobs or {}).get("content") or []
        if not entries:
            return []
        ranked = [
            (str(t["token"]), float(t["logprob"])) for t in entries[0].get("top_logprobs") or []
        ]
        return sorted(ranked, key=lambda t: -t[1])[:k]


async def gather(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently, results in order; the first failure cancels the rest and is raised
    as itself (not as an exception group)."""
    if len(coros) == 1:
        return [await coros[0]]
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None
    return [t.result() for t in tasks]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
