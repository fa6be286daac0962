"""The Chat Completions front end: a `Job`'s answer as `chat.completion` JSON or chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.responses import Response

from ponder.errors import InvalidRequest
from ponder.fastjson import FastJSONResponse
from ponder.protocol import ChatCompletionRequest
from ponder.proxy.convert import completion_body, to_messages, to_sampling, usage_dict
from ponder.proxy.job import ChatRequest, Job
from ponder.proxy.streaming import ChatChunks
from ponder.types import Completion

MCTS_FIELDS = {
    "mcts_simulations": "simulations",
    "mcts_exploration": "exploration",
    "mcts_depth": "depth",
}
DECODINGS: dict[str, dict[str, str]] = {
    "cot_decoding": {"k": "k", "aggregate_paths": "aggregate"},
    "thinkdeeper": {
        "min_thinking_tokens": "min_thinking_tokens",
        "max_thinking_tokens": "max_thinking_tokens",
    },
    "entropy_decoding": {},
    "deepconf": {},
    "autothink": {},
}
"""Top-level fields that clients written for other proxies send, each the option it sets:
`mcts`'s always, and with `decoding` (which names the strategy, as `optillm_approach` does)
that strategy's own. They become the strategy's options where `ponder` does not give them, and
are never forwarded to the backend."""


def chat_request(request: ChatCompletionRequest) -> ChatRequest:
    """A Chat Completions request as `ChatService` takes it."""
    sampling = to_sampling(request)
    decoding = sampling.extra.get("decoding")
    if decoding is not None and (not isinstance(decoding, str) or decoding not in DECODINGS):
        raise InvalidRequest(
            f"unknown decoding {decoding!r}: one of {', '.join(DECODINGS)}", param="decoding"
        )
    groups = {"mcts": MCTS_FIELDS, **({decoding: DECODINGS[decoding]} if decoding else {})}
    extra = dict(sampling.extra)
    extra.pop("decoding", None)
    ponder = request.ponder
    for slug, fields in groups.items():
        taken = {fields[f]: extra.pop(f) for f in list(extra) if f in fields}
        if not taken:
            continue
        options = dict(ponder or {})
        given = options.get(slug, {})
        if isinstance(given, dict):  # else the options' own check refuses it
            options[slug] = {**taken, **given}
        ponder = options
    if extra != sampling.extra:
        sampling = sampling.with_(extra=extra)
    return ChatRequest(
        model=request.model,
        messages=to_messages(request),
        sampling=sampling,
        n=request.n,
        approach=request.optillm_approach or decoding,
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
