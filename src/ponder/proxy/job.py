"""One request inside Ponder: `ChatRequest`, what a front end hands over, and `Job`, the
request once validated, with its route, strategies, plugins and context, ready to run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ponder.errors import DeadlineExceeded
from ponder.plugins.base import Plugin
from ponder.proxy.conversation_log import ConversationLog, entry
from ponder.strategies.base import Strategy
from ponder.strategies.context import RequestContext, Sink
from ponder.strategies.engine import Engine
from ponder.strategies.resolve import Route
from ponder.types import Completion, Message, Sampling


@dataclass(frozen=True)
class ChatRequest:
    """One request as a front end hands it over: internal types only."""

    model: str
    """The model name as the client gave it (strategies and backend model)."""
    messages: list[Message]
    sampling: Sampling
    n: int = 1
    approach: str | None = None
    """`optillm_approach`: the strategies, when the model name does not carry them."""
    approach_param: str = "optillm_approach"
    """Where `approach` came from, for its errors (`messages`: a tag in the conversation)."""
    ponder: Mapping[str, Any] | None = None
    """The `ponder` options (flags, limits, per-strategy options)."""
    stream: bool = False
    keep_working: bool = False
    """Keep the strategy's working when not streaming (`RequestContext.working`), for front
    ends that return it whole."""


@dataclass
class Job:
    """One validated request, ready to run."""

    route: Route
    strategies: list[Strategy]
    plugins: list[Plugin]
    engine: Engine
    request: ChatRequest
    ctx: RequestContext
    log: ConversationLog | None = None

    @property
    def messages(self) -> list[Message]:
        return self.request.messages

    @property
    def n_choices(self) -> int:
        branches = len(self.strategies) if self.route.mode == "parallel" else 1
        return self.ctx.n * branches

    async def run(self, sink: Sink | None) -> list[Completion]:
        """Run the strategies; past the budget's deadline every call in flight is cancelled.
        With a conversation log, the request is written to it however the run ends."""
        if self.log is None:
            return await self._traced(sink)
        answer: list[Completion] | None = None
        error: BaseException | None = None
        try:
            answer = await self._traced(sink)
            return answer
        except BaseException as exc:
            error = exc
            raise
        finally:
            seconds = time.monotonic() - self.ctx.started
            self.log.write(
                entry(
                    model=self.request.model,
                    route=self.route,
                    ctx=self.ctx,
                    seconds=seconds,
                    answer=answer,
                    error=error,
                )
            )

    async def _traced(self, sink: Sink | None) -> list[Completion]:
        """`_run`, in a span of its own when tracing is on: the route, its steps as events,
        its backend calls as child spans, and the request's usage."""
        tracing = self.ctx.tracing
        if tracing is None:
            return await self._run(sink)
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.route.model,
            "ponder.model": self.request.model,
            "ponder.route.strategies": list(self.route.slugs),
            "ponder.route.plugins": list(self.route.plugins),
            "ponder.request_id": self.ctx.request_id,
            "ponder.tenant": self.ctx.tenant,
        }
        with tracing.span(f"ponder.route {'&'.join(self.route.slugs)}", attributes) as span:
            try:
                return await self._run(sink)
            finally:
                usage = self.ctx.meter.usage
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
                span.set_attribute("ponder.backend_calls", self.ctx.meter.calls)

    async def _run(self, sink: Sink | None) -> list[Completion]:
        self.ctx.sink = sink
        deadline = self.ctx.budget.deadline_s
        timer = asyncio.timeout(deadline)
        try:
            async with timer:
                return await self.engine.run(
                    self.route, self.strategies, self.ctx, self.messages, self.plugins
                )
        except TimeoutError:
            if not timer.expired():
                raise  # a timeout from below, not the deadline
            raise DeadlineExceeded(
                f"the request did not finish within its deadline of {deadline:g} s",
                param="ponder.deadline_s",
            ) from None
