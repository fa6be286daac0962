"""The Chat Completions front end: a `Job`'s answer as `chat.completion` JSON or chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.responses import Response

from ponder.fastjson import FastJSONResponse
from ponder.protocol import ChatCompletionRequest
from ponder.proxy.chat import ChatRequest, Job
from ponder.proxy.convert import completion_body, to_messages, to_sampling, usage_dict
from ponder.proxy.streaming import ChatChunks
from ponder.types import Completion

MCTS_FIELDS = {
    "mcts_simulations": "simulations",
    "mcts_exploration": "exploration",
    "mcts_depth": "depth",
}
"""Top-level request fields that clients of other proxies send to tune `mcts`: taken as its
options (where `ponder.mcts` does not give them) and never forwarded to the backend."""


def chat_request(request: ChatCompletionRequest) -> ChatRequest:
    """A Chat Completions request as `ChatService` takes it."""
    sampling = to_sampling(request)
    ponder = request.ponder
    tuning = {f: sampling.extra[f] for f in MCTS_FIELDS if f in sampling.extra}
    if tuning:
        sampling = sampling.with_(
            extra={k: v for k, v in sampling.extra.items() if k not in MCTS_FIELDS}
        )
        given = (ponder or {}).get("mcts", {})
        if isinstance(given, dict):  # else the options' own check refuses it
            mcts = {MCTS_FIELDS[f]: v for f, v in tuning.items()}
            ponder = {**(ponder or {}), "mcts": {**mcts, **given}}
    return ChatRequest(
        model=request.model,
        messages=to_messages(request),
        sampling=sampling,
        n=request.n,
        approach=request.optillm_approach,
        ponder=ponder,
        stream=bool(request.stream),
    )


@dataclass(frozen=True)
class ChatCompletions:
    model: str
    """The model name the client gave, echoed in the answer."""
    include_usage: bool = False
    """`stream_options.include_usage`: end the stream with a usage chunk."""
    created: int = field(default_factory=lambda: int(time.time()))

    async def respond(self, job: Job, choices: list[Completion]) -> Response:
        ctx = job.ctx
        body = completion_body(
            completion_id=f"chatcmpl-{ctx.request_id}",
            created=self.created,
            model=self.model,
            choices=choices,
            usage=ctx.meter.usage,
            reasoning_tokens=ctx.meter.reasoning_tokens(choices),
            trace=ctx.trace if ctx.options.get("trace") else None,
        )
        return FastJSONResponse(body)

    def stream_format(self, job: Job) -> ChatChunks:
        meter = job.ctx.meter
        return ChatChunks(
            completion_id=f"chatcmpl-{job.ctx.request_id}",
            created=self.created,
            model=self.model,
            include_usage=self.include_usage,
            n_choices=job.n_choices,
            usage=lambda choices: usage_dict(meter.usage, meter.reasoning_tokens(choices)),
            calls=lambda: meter.calls,
        )
