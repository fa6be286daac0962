"""Server-sent events, for every front end.

The strategy runs as a task and pushes deltas into a queue. `events()` turns that into a
front-end-neutral sequence: the deltas as they come, a `Tick` after every `keepalive_s` of
silence (a long search says nothing for minutes, and proxies and clients with read timeouts
must not give up), and `Finished` with the choices at the end; the run's failure is raised.
`sse_stream()` feeds the events to a front end's `StreamFormat`, which writes its own events
(Chat Completions chunks, Anthropic Messages events, Responses events): a preamble before the
first byte, its keep-alive, and a failure after the first byte sent in-band in its own shape.
Closing the stream (the client went away) cancels the task and with it every backend call in
flight.

`ChatChunks` is the Chat Completions format: per choice, one role chunk and exactly one
`finish_reason`, then one usage chunk when asked, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ponder.errors import InternalError, PonderError
from ponder.proxy.convert import SSE_DONE, delta_dict, sse
from ponder.strategies.context import Sink
from ponder.types import Completion, Delta, tool_call_deltas

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = 15.0


@dataclass(frozen=True, slots=True)
class Begin:
    """The stream may start now (first, unless it holds until the backend's first token)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing to say for `keepalive_s`: time for the front end's keep-alive."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended with these choices."""

    choices: list[Completion]


Event = Begin | Tick | Delta | Finished


async def events(
    run: Callable[[Sink], Coroutine[Any, Any, list[Completion]]],
    *,
    hold_until_first_token: bool,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncGenerator[Event, None]:
    """The events of `run`, started with the sink it streams into. With
    `hold_until_first_token`, nothing comes before the backend produced something (or
    `keepalive_s` passed), so that an early failure is raised before the stream starts and
    the caller can still answer with a proper HTTP status. A backend's usage deltas are left
    out (the meter has counted them)."""
    queue: asyncio.Queue[Delta | None] = asyncio.Queue()
    task = asyncio.create_task(run(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        if not hold_until_first_token:
            yield Begin()
        while True:
            try:
                delta = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield Tick()
                continue
            if delta is None:
                break
            if delta.usage is None:
                yield delta
        error = task.exception()
        if error is not None:
            raise error
        yield Finished(task.result())
    finally:
        if not task.done():
            task.cancel()


class StreamFormat(Protocol):
    """How one front end writes a stream. One instance serves one response."""

    def begin(self) -> bytes:
        """What opens the stream (sent before anything else)."""
        ...

    def keepalive(self) -> bytes: ...

    def delta(self, delta: Delta) -> bytes:
        """An increment of the answer or its reasoning (b"" for nothing to send)."""
        ...

    async def finish(self, choices: list[Completion]) -> bytes:
        """What closes a stream that succeeded."""
        ...

    def error(self, error: PonderError) -> bytes:
        """A failure after the stream started, in the front end's shape."""
        ...


async def sse_stream(
    source: AsyncIterator[Event], fmt: StreamFormat
) -> AsyncGenerator[bytes, None]:
    """The bytes of a stream: `fmt`'s writing of `source`. A failure before the first byte is
    raised (the caller answers with a status); after it, it is sent in-band."""
    started = False
    try:
        async for event in source:
            if not started:
                started = True
                yield fmt.begin()
            if isinstance(event, Tick):
                yield fmt.keepalive()
            elif isinstance(event, Delta):
                if body := fmt.delta(event):
                    yield body
            elif isinstance(event, Finished):
                yield await fmt.finish(event.choices)
    except Exception as error:
        if not started:
            raise
        yield fmt.error(in_band(error))
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def in_band(error: BaseException) -> PonderError:
    """The error to report once a stream has started (a bug is logged and hidden)."""
    if isinstance(error, PonderError):
        return error
    log.error("stream failed", exc_info=error)
    return InternalError()


# ---- Chat Completions ----------------------------------------------------------------------


@dataclass
class ChatChunks:
    """`chat.completion.chunk` events for one streamed Chat Completions response."""

    completion_id: str
    created: int
    model: str
    include_usage: bool
    n_choices: int
    usage: Callable[[Sequence[Completion]], dict[str, Any]]
    """The usage object for the answer (`usage_body`)."""
    calls: Callable[[], int] = lambda: 0
    """How many backend calls the answer took: with the usage, as `ponder.backend_calls` (a
    stream's headers leave before the count is known; JSON answers carry it in
    `x-ponder-backend-calls`)."""
    _finished: set[int] = field(default_factory=set)
    _spoke: set[int] = field(default_factory=set)

    def chunk(
        self,
        choices: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        **more: Any,
    ) -> bytes:
        payload: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = usage
        return sse(payload | more)

    @staticmethod
    def choice(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def begin(self) -> bytes:
        return b"".join(
            self.chunk([self.choice(i, {"role": "assistant", "content": ""})])
            for i in range(self.n_choices)
        )

    def keepalive(self) -> bytes:
        return KEEPALIVE

    def delta(self, delta: Delta) -> bytes:
        if delta.index in self._finished:
            return b""
        body = delta_dict(delta)
        if delta.content or delta.tool_calls:  # reasoning alone is not the answer
            self._spoke.add(delta.index)
        if delta.finish_reason is not None:
            self._finished.add(delta.index)
        if not body and delta.finish_reason is None:
            return b""
        return self.chunk([self.choice(delta.index, body, delta.finish_reason, delta.logprobs)])

    async def finish(self, choices: list[Completion]) -> bytes:
        out = []
        for index, completion in enumerate(choices):
            if index in self._finished:
                continue
            body = {} if index in self._spoke else delta_dict(_whole(completion))
            out.append(self.chunk([self.choice(index, body, completion.finish_reason)]))
        if self.include_usage:
            last = self.chunk([], self.usage(choices), ponder={"backend_calls": self.calls()})
            out.append(last)
        out.append(SSE_DONE)
        return b"".join(out)

    def error(self, error: PonderError) -> bytes:
        return sse(error.to_dict())


def _whole(c: Completion) -> Delta:
    return Delta(content=c.content, tool_calls=tool_call_deltas(c.tool_calls))
