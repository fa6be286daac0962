"""Test doubles that Ponder's tests, and users' tests, can import.

`ScriptedBackend` answers from a list of replies or from a function, records every call, and
can hold calls at a gate so a test can observe how many run at the same time::

    backend = ScriptedBackend(["4", "5", "4"])
    app = create_app(Settings(), backend=backend)
    ...
    assert len(backend.calls) == 1

Continuations and log-probabilities are scripted the same way: give the backend
`Capabilities(continuation=True, logprobs=True)`, read what a call continues from `Call.prefix`,
and answer with `logprob_reply(...)`, whose tokens carry their alternatives.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ponder.backends.base import Capabilities, continued_prefix
from ponder.errors import PonderError
from ponder.serving import running_server
from ponder.testing_upstreams import FakeUpstream, HandlerUpstream, words
from ponder.tokens import count_prompt_tokens, count_tokens

if TYPE_CHECKING:
    pass

from ponder.types import (
    Completion,
    Delta,
    FinishReason,
    Message,
    Sampling,
    Usage,
    tool_call_deltas,
)

__all__ = [
    "Call",
    "FakeUpstream",
    "HandlerUpstream",
    "Reply",
    "ScriptedBackend",
    "logprob_reply",
    "running_server",
]


@dataclass(frozen=True)
class Call:
    """One call the backend received."""

    model: str
    messages: tuple[Message, ...]
    sampling: Sampling
    n: int
    stream: bool

    @property
    def prompt(self) -> str:
        """The last user message's text: what most assertions look at."""
        users = [m for m in self.messages if m.role == "user"]
        return users[-1].text if users else ""

    @property
    def prefix(self) -> str | None:
        """The start of the assistant's answer this call continues (`ctx.continue_from`), or
        None for a call that starts a new answer."""
        return continued_prefix(self.messages, self.sampling)

    @property
    def conversation(self) -> tuple[Message, ...]:
        """The messages before the continued assistant turn (all of them for other calls)."""
        return self.messages if self.prefix is None else self.messages[:-1]


Alternatives = Sequence[tuple[str, float]]
"""A token's candidates as (text, log-probability), the drawn one first."""


def logprob_reply(
    tokens: Sequence[Alternatives], finish_reason: FinishReason = "stop"
) -> Completion:
    """A reply written token by token, greedily: each token is the first of its candidates,
    and carries them as its `top_logprobs` (OpenAI's `logprobs.content` shape). The content
    is the tokens' text."""
    entries = []
    for candidates in tokens:
        token, logprob = candidates[0]
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in candidates]
        entries.append(
            {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top}
        )
    text = "".join(str(e["token"]) for e in entries)
    return Completion(text, finish_reason=finish_reason, logprobs={"content": entries})


Reply = str | Completion | PonderError
ReplyFn = Callable[[Call, int], Reply | Awaitable[Reply]]


@dataclass
class ScriptedBackend:
    """A Backend whose answers are scripted.

    `replies` is either a sequence, consumed in order and one per choice (an exhausted list
    raises), or a function `(call, choice_index) -> reply`. A reply that is a `PonderError` is
    raised. Token usage is counted with tiktoken, so usage assertions are exact and honest.
    """

    replies: Sequence[Reply] | ReplyFn = ("ok",)
    model_ids: tuple[str, ...] = ("scripted",)
    capabilities: Capabilities = field(default_factory=Capabilities)
    latency_s: float = 0.0
    name: str = "scripted"
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: int = 0
    _gate: asyncio.Event | None = None
    _arrived: asyncio.Condition | None = None
    _cursor: itertools.count[int] = field(default_factory=itertools.count)

    # ---- controlling the script ------------------------------------------------------------

    def hold(self) -> None:
        """From now on, calls wait at the gate until `release()`."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def wait_for_in_flight(self, count: int, within_s: float = 5.0) -> None:
        """Wait until `count` calls are in flight at the same time."""
        cond = self._condition()
        async with asyncio.timeout(within_s), cond:
            await cond.wait_for(lambda: self.in_flight >= count)

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        return list(self.model_ids)

    def serves(self, model: str) -> bool:
        return model in self.model_ids

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        call = Call(model, tuple(messages), sampling, n, stream=False)
        async with self._in_flight(call):
            return [await self._reply(call, i) for i in range(n)]

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        call = Call(model, tuple(messages), sampling, n, stream=True)
        async with self._in_flight(call):
            choices = [await self._reply(call, i) for i in range(n)]
            usage = Usage()
            for i, choice in enumerate(choices):
                for piece in words(choice.content or ""):
                    yield Delta(index=i, content=piece)
                    await asyncio.sleep(0)
                if choice.tool_calls:
                    yield Delta(index=i, tool_calls=tool_call_deltas(choice.tool_calls))
                yield Delta(
                    index=i,
                    finish_reason=choice.finish_reason,
                    completion_tokens=choice.usage.completion_tokens,
                    # a reply's log-probabilities, where the call asked for them
                    logprobs=choice.logprobs if call.sampling.logprobs else None,
                )
                usage = usage + choice.usage
            yield Delta(usage=usage)

    # ---- internals -------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._arrived is None:
            self._arrived = asyncio.Condition()
        return self._arrived

    def _in_flight(self, call: Call) -> _InFlight:
        return _InFlight(self, call)

    async def _reply(self, call: Call, index: int) -> Completion:
        if callable(self.replies):
            reply = self.replies(call, index)
            if isinstance(reply, Awaitable):
                reply = await reply
        else:
            position = next(self._cursor)
            if position >= len(self.replies):
                raise AssertionError(f"ScriptedBackend ran out of replies at call {position + 1}")
            reply = self.replies[position]
        if isinstance(reply, PonderError):
            raise reply
        if isinstance(reply, str):
            reply = Completion(content=reply)
        if reply.usage == Usage():
            prompt = count_prompt_tokens(call.messages) if index == 0 else 0
            reply = replace(reply, usage=Usage(prompt, count_tokens(reply.content or "")))
        return reply


class _InFlight:
    """Records a call, counts it in flight, and holds it at the gate."""

    def __init__(self, backend: ScriptedBackend, call: Call) -> None:
        self.backend = backend
        self.call = call

    async def __aenter__(self) -> None:
        b = self.backend
        b.calls.append(self.call)
        b.in_flight += 1
        b.max_in_flight = max(b.max_in_flight, b.in_flight)
        cond = b._condition()
        async with cond:
            cond.notify_all()
        try:
            if b._gate is not None:
                await b._gate.wait()
            if b.latency_s:
                await asyncio.sleep(b.latency_s)
        except asyncio.CancelledError:
            b.in_flight -= 1
            b.cancelled += 1
            raise

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        b = self.backend
        b.in_flight -= 1
        if exc_type is asyncio.CancelledError or exc_type is GeneratorExit:
            b.cancelled += 1
