"""OpenTelemetry traces: a span per request (continuing the caller's traceparent), one per
route run with its steps as events, one per backend call with the GenAI conventions; text
only with PONDER_TRACE_CONTENT."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.tracing import for_provider
from tests.conftest import MODEL, asgi_client, scripted, user

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced_app(
    exporter: InMemorySpanExporter, *, content: bool = False, replies: Any = None
) -> Any:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = scripted(replies or ["It is 4.", "Four: 4.", "I say 5."])
    return create_app(Settings(), backend=backend, tracing=for_provider(provider, content))


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_is_a_tree_of_spans_under_the_callers_trace(
    exporter: InMemorySpanExporter, stream: bool
) -> None:
    app = traced_app(exporter)
    body = {
        "model": f"sc-{MODEL}",
        "messages": [user("2+2?")],
        "max_tokens": 30,
        "temperature": 0.5,
        "stream": stream,
        "ponder": {"sc": {"samples": 3}},
    }
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"traceparent": PARENT}
        )
    assert response.status_code == 200
    spans = by_name(exporter.get_finished_spans())
    (request,) = spans["POST /v1/chat/completions"]
    (route,) = spans["ponder.route sc"]
    calls = spans[f"chat {MODEL}"]
    assert len(calls) == 3
    # one trace, the caller's: request -> route -> each backend call
    assert {format(s.context.trace_id, "032x") for s in (request, route, *calls)} == {TRACE_ID}
    assert request.parent is not None and format(request.parent.span_id, "016x") == PARENT[36:52]
    assert route.parent is not None and route.parent.span_id == request.context.span_id
    assert {c.parent.span_id for c in calls if c.parent} == {route.context.span_id}
    assert request.attributes["http.response.status_code"] == 200
    # GenAI conventions on each call, and the request's totals on the route
    for call in calls:
        assert call.attributes["gen_ai.request.model"] == MODEL
        assert call.attributes["gen_ai.request.temperature"] == 0.5
        assert call.attributes["gen_ai.request.max_tokens"] == 30
        assert call.attributes["gen_ai.usage.output_tokens"] > 0
        assert "gen_ai.input.messages" not in call.attributes  # no text unless asked
    total = sum(c.attributes["gen_ai.usage.output_tokens"] for c in calls)
    assert route.attributes["gen_ai.usage.output_tokens"] == total
    assert route.attributes["ponder.backend_calls"] == 3
    (vote,) = [e for e in route.events if e.name == "ponder.step.vote"]
    assert vote.attributes["winner"] == "4"
    assert json.loads(vote.attributes["tally"]) == {"4": 2, "5": 1}


async def test_text_goes_into_spans_only_when_asked(exporter: InMemorySpanExporter) -> None:
    app = traced_app(exporter, content=True, replies=["Paris."])
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [user("Capital of France?")]}
        )
    assert response.status_code == 200
    (call,) = by_name(exporter.get_finished_spans())[f"chat {MODEL}"]
    assert json.loads(call.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "content": "Capital of France?"}
    ]
    assert json.loads(call.attributes["gen_ai.output.messages"])[0]["content"] == "Paris."


async def test_a_failed_backend_call_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    from ponder.errors import BackendUnavailable

    app = traced_app(exporter, replies=[BackendUnavailable("down")])
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [user("hi")]}
        )
    assert response.status_code == 503
    spans = by_name(exporter.get_finished_spans())
    (call,) = spans[f"chat {MODEL}"]
    assert call.status.status_code.name == "ERROR"
    assert call.attributes["error.type"] == "backend_unavailable"
    (request,) = spans["POST /v1/chat/completions"]
    assert request.status.status_code.name == "ERROR"


def test_without_an_endpoint_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert create_app(Settings(), backend=scripted()).state.ponder.tracing is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    tracing = create_app(Settings(), backend=scripted()).state.ponder.tracing
    assert tracing is not None and tracing.provider is not None
    tracing.provider.shutdown()
