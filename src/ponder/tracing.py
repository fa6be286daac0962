"""OpenTelemetry traces: one span per request, one per strategy step, one per backend call,
with the GenAI semantic conventions (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...).

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans go there over OTLP/HTTP, with the
SDK's own `OTEL_*` settings), or when a test hands `create_app` a tracer provider. The incoming
`traceparent` is continued. Prompt and answer text go into spans only with
`PONDER_TRACE_CONTENT=true`. Each app has its own provider; nothing is set globally. Without the
`otel` extra installed, tracing is off and costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ponder.types import Completion, Message, Sampling, Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
SYSTEM = "ponder"


@dataclass
class Tracing:
    """What a request needs to trace: the tracer, and whether text may go into spans."""

    tracer: Tracer
    content: bool = False
    provider: TracerProvider | None = None
    """The provider this app built (shut down with the app); None when it was handed one."""

    @contextmanager
    def request(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        """The request's span, a child of the caller's `traceparent` when it sent one."""
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        parent = extract(dict(headers))
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        ) as span:
            yield span

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes=dict(attributes)) as span:
            yield span

    def call(self, model: str, messages: Sequence[Message], sampling: Sampling, n: int) -> CallSpan:
        """A backend call's span, a child of the current one (not made current itself: a
        streamed call's span lives across the caller's awaits)."""
        from opentelemetry.trace import SpanKind

        span = self.tracer.start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes=self.call_attributes(model, messages, sampling, n),
        )
        return CallSpan(self, span)

    def step(self, name: str, detail: Mapping[str, Any]) -> None:
        """A strategy step, as an event of the current span (the route's)."""
        from opentelemetry.trace import get_current_span

        get_current_span().add_event(
            f"ponder.step.{name}", {key: _attribute(value) for key, value in detail.items()}
        )

    def call_attributes(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int
    ) -> dict[str, Any]:
        """A backend call's request attributes (GenAI conventions)."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": SYSTEM,
            "gen_ai.request.model": model,
            "gen_ai.request.choice.count": n,
        }
        for key, value in (
            ("gen_ai.request.temperature", sampling.temperature),
            ("gen_ai.request.top_p", sampling.top_p),
            ("gen_ai.request.max_tokens", sampling.max_tokens),
            ("gen_ai.request.seed", sampling.seed),
        ):
            if value is not None:
                attributes[key] = value
        if sampling.stop:
            attributes["gen_ai.request.stop_sequences"] = list(sampling.stop)
        if self.content:
            attributes["gen_ai.input.messages"] = json.dumps(
                [{"role": m.role, "content": m.text} for m in messages], ensure_ascii=False
            )
        return attributes

    def answered(self, span: Span, choices: Sequence[Completion], usage: Usage) -> None:
        """A backend call's response attributes."""
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if usage.cached_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [c.finish_reason for c in choices])
        if self.content:
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps([{"role": "assistant", "content": c.content} for c in choices]),
            )


@dataclass
class CallSpan:
    tracing: Tracing
    span: Span

    def end(self, choices: Sequence[Completion], usage: Usage) -> None:
        self.tracing.answered(self.span, choices, usage)
        self.span.end()

    def end_with(self, error: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self.span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
        self.span.end()


def _attribute(value: Any) -> str | bool | int | float:
    """A step's detail as a span attribute: primitives as they are, the rest as JSON."""
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def from_environment(content: bool) -> Tracing | None:
    """Tracing to the OTLP endpoint the environment names; None when none is named, or when
    the `otel` extra is not installed (said once in the log)."""
    if not os.environ.get(ENDPOINT_VARIABLE):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "%s is set but the otel extra is not installed: pip install 'ponder[otel]'",
            ENDPOINT_VARIABLE,
        )
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "ponder"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider.get_tracer("ponder"), content, provider)


def for_provider(provider: Any, content: bool = False) -> Tracing:
    """Tracing through a provider the caller owns (tests hand in one with an in-memory
    exporter)."""
    return Tracing(provider.get_tracer("ponder"), content)
