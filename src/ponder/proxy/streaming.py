"""Server-sent events for a streamed chat completion.

The strategy runs as a task and pushes deltas into a queue; this generator turns them into
`chat.completion.chunk` events. It guarantees, per choice, one role chunk and exactly one
`finish_reason`, then one usage chunk when asked, then `[DONE]`; a failure after the first byte
is sent in-band as `data: {"error": ...}`. While the strategy works without anything to show,
an SSE comment (`: keep-alive`) goes out every `keepalive_s`, so proxies and clients with read
timeouts do not give up on a long search. Closing the generator (the client went away) cancels
the task and with it every backend call in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ponder.errors import InternalError, PonderError
from ponder.proxy.convert import SSE_DONE, delta_dict, sse, usage_dict
from ponder.strategies.context import Sink
from ponder.types import Completion, Delta, Usage, tool_call_deltas

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class ChunkFormat:
    completion_id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = usage_dict(usage) if usage is not None else None
        return sse(payload)

    def choice(
        self, index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


async def stream_chunks(
    run: Callable[[Sink], Coroutine[Any, Any, list[Completion]]],
    fmt: ChunkFormat,
    *,
    n_choices: int,
    usage: Callable[[], Usage],
    hold_until_first_token: bool,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncGenerator[bytes, None]:
    """Yield SSE bytes for `run`. With `hold_until_first_token`, nothing is yielded before the
    backend produced something, so an early failure is raised to the caller (which can still
    answer with a proper HTTP status) instead of being sent in-band; but not for longer than
    `keepalive_s`, after which the stream starts and keeps itself alive."""
    queue: asyncio.Queue[Delta | None] = asyncio.Queue()
    task = asyncio.create_task(run(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    finished: set[int] = set()
    spoke: set[int] = set()
    roles_sent = False
    try:
        if not hold_until_first_token:
            roles_sent = True
            yield _roles(fmt, n_choices)
        while True:
            try:
                delta = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:  # nothing to say for a while: a comment keeps the line open
                if not roles_sent:
                    roles_sent = True
                    yield _roles(fmt, n_choices)
                yield KEEPALIVE
                continue
            if delta is None:
                break
            if not roles_sent:
                roles_sent = True
                yield _roles(fmt, n_choices)
            if delta.index in finished or delta.usage is not None:
                continue
            body = delta_dict(delta)
            if delta.content or delta.tool_calls:  # reasoning alone is not the answer
                spoke.add(delta.index)
            if delta.finish_reason is not None:
                finished.add(delta.index)
            if body or delta.finish_reason is not None:
                yield fmt.chunk(
                    [fmt.choice(delta.index, body, delta.finish_reason, delta.logprobs)]
                )
        error = task.exception()
        if error is not None:
            if not roles_sent:
                raise error
            yield sse(_in_band(error))
            return
        if not roles_sent:
            yield _roles(fmt, n_choices)
        for index, completion in enumerate(task.result()):
            if index in finished:
                continue
            body = {} if index in spoke else delta_dict(_whole(completion))
            yield fmt.chunk([fmt.choice(index, body, completion.finish_reason)])
        if fmt.include_usage:
            yield fmt.chunk([], usage())
        yield SSE_DONE
    finally:
        if not task.done():
            task.cancel()


def _roles(fmt: ChunkFormat, n: int) -> bytes:
    return b"".join(
        fmt.chunk([fmt.choice(i, {"role": "assistant", "content": ""})]) for i in range(n)
    )


def _whole(c: Completion) -> Delta:
    return Delta(content=c.content, tool_calls=tool_call_deltas(c.tool_calls))


def _in_band(error: BaseException) -> dict[str, Any]:
    if isinstance(error, PonderError):
        return error.to_dict()
    log.error("stream failed", exc_info=error)
    return InternalError().to_dict()
