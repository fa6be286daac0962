"""GET /metrics: Prometheus counters and histograms per app, with bounded labels."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.proxy import create_app
from ponder.proxy.metrics import _in_band_code, strategy_label
from ponder.strategies.resolve import Route
from tests.conftest import MODEL, asgi_client, chat_scope, scripted, user

SC = f"sc-{MODEL}"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name`, by their labels."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def scrape(client: httpx.AsyncClient, key: str | None = None) -> Samples:
    headers = {"authorization": f"Bearer {key}"} if key else None
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def body(model: str = MODEL, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [user("What is 2+2?")], **fields}


async def test_a_non_streamed_sc_request_is_counted_with_its_calls_and_tokens() -> None:
    backend = scripted(["4", "4", "5"])
    async with asgi_client(create_app(Settings(), backend=backend)) as c:
        response = await c.post(
            "/v1/chat/completions", json=body(SC, ponder={"sc": {"samples": 3}})
        )
        assert response.status_code == 200
        samples = await scrape(c)
    usage = response.json()["usage"]
    labels = (("route", "chat"), ("status", "200"), ("strategy", "sc"))
    assert named(samples, "ponder_requests_total") == {labels: 1.0}
    assert named(samples, "ponder_errors_total") == {}
    assert value(samples, "ponder_request_duration_seconds_count", route="chat", strategy="sc") == 1
    assert value(samples, "ponder_backend_calls_per_request_count", strategy="sc") == 1
    assert value(samples, "ponder_backend_calls_per_request_sum", strategy="sc") == 3
    assert len(backend.calls) == 3
    for kind in ("prompt", "completion"):
        assert value(samples, "ponder_tokens_per_request_count", strategy="sc", kind=kind) == 1
        sum_ = value(samples, "ponder_tokens_per_request_sum", strategy="sc", kind=kind)
        assert sum_ == usage[f"{kind}_tokens"] > 0
    assert value(samples, "ponder_in_flight_requests") == 0


async def test_a_streamed_request_is_counted_when_its_stream_ends() -> None:
    backend = scripted(["4", "4", "4"])
    app = create_app(Settings(), backend=backend)
    async with asgi_client(app) as c:
        backend.hold()
        stream = asyncio.create_task(
            c.post(
                "/v1/chat/completions", json=body(SC, stream=True, ponder={"sc": {"samples": 3}})
            )
        )
        await backend.wait_for_in_flight(3)
        during = await scrape(c)
        backend.release()
        response = await stream
        after = await scrape(c)
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    assert named(during, "ponder_requests_total") == {}
    assert value(during, "ponder_in_flight_requests") == 1
    assert named(after, "ponder_requests_total") == {
        (("route", "chat"), ("status", "200"), ("strategy", "sc")): 1.0,
        (("route", "metrics"), ("status", "200"), ("strategy", "-")): 1.0,  # the first scrape
    }
    assert value(after, "ponder_backend_calls_per_request_sum", strategy="sc") == 3
    assert value(after, "ponder_in_flight_requests") == 0


async def test_an_in_band_stream_error_is_counted_with_its_code() -> None:
    failure = BackendUnavailable("no upstream")
    backend = scripted([failure, failure])
    async with asgi_client(create_app(Settings(), backend=backend)) as c:
        response = await c.post(
            "/v1/chat/completions", json=body(SC, stream=True, ponder={"sc": {"samples": 2}})
        )
        samples = await scrape(c)
    assert response.status_code == 200
    last = json.loads(response.text.strip().split("\n")[-1].removeprefix("data: "))
    code = last["error"]["code"]
    assert code == "backend_unavailable"
    labels = (("route", "chat"), ("status", "200"), ("strategy", "sc"))
    assert named(samples, "ponder_requests_total") == {labels: 1.0}
    assert named(samples, "ponder_errors_total") == {(("strategy", "sc"), ("type", code)): 1.0}


async def test_an_unknown_model_counts_a_404_without_a_strategy() -> None:
    backend = scripted()
    async with asgi_client(create_app(Settings(), backend=backend)) as c:
        response = await c.post("/v1/chat/completions", json=body("no-such-model"))
        samples = await scrape(c)
    assert response.status_code == 404
    labels = (("route", "chat"), ("status", "404"), ("strategy", "-"))
    assert named(samples, "ponder_requests_total") == {labels: 1.0}
    errors = named(samples, "ponder_errors_total")
    assert errors == {(("strategy", "-"), ("type", "model_not_found")): 1.0}
    assert named(samples, "ponder_backend_calls_per_request_count") == {}
    assert not any("no-such-model" in v for labels in samples for _, v in labels[1])
    assert backend.calls == []


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/messages", {"max_tokens": 10, "messages": [user("hi")]}),
        ("/v1/responses", {"input": "hi"}),
    ],
)
async def test_every_front_ends_errors_are_counted_by_ponders_code(
    path: str, payload: dict[str, object]
) -> None:
    """The Messages API's error body has no code: the x-ponder-error-code header gives it."""
    async with asgi_client(create_app(Settings(), backend=scripted())) as c:
        response = await c.post(path, json={"model": "no-such-model", **payload})
        samples = await scrape(c)
    assert response.status_code == 404
    assert response.headers["x-ponder-error-code"] == "model_not_found"
    errors = named(samples, "ponder_errors_total")
    assert errors == {(("strategy", "-"), ("type", "model_not_found")): 1.0}


async def test_other_routes_are_labelled_by_name() -> None:
    async with asgi_client(create_app(Settings(), backend=scripted())) as c:
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.get("/no/such/path")).status_code == 404
        feedback = {"request_id": "unknown", "correct": True}
        assert (await c.post("/v1/ponder/feedback", json=feedback)).status_code == 404
        assert (await c.get("/v1/ponder/spl/strategies")).status_code == 200
        await c.get("/metrics")
        samples = await scrape(c)
    assert named(samples, "ponder_requests_total") == {
        (("route", "models"), ("status", "200"), ("strategy", "-")): 1.0,
        (("route", "-"), ("status", "404"), ("strategy", "-")): 1.0,
        (("route", "feedback"), ("status", "404"), ("strategy", "-")): 1.0,
        (("route", "spl_strategies"), ("status", "200"), ("strategy", "-")): 1.0,
        (("route", "metrics"), ("status", "200"), ("strategy", "-")): 1.0,
    }


async def test_the_in_flight_gauge_follows_a_held_request() -> None:
    backend = scripted(["ok"])
    async with asgi_client(create_app(Settings(), backend=backend)) as c:
        backend.hold()
        task = asyncio.create_task(c.post("/v1/chat/completions", json=body()))
        await backend.wait_for_in_flight(1)
        assert value(await scrape(c), "ponder_in_flight_requests") == 1
        backend.release()
        assert (await task).status_code == 200
        samples = await scrape(c)
    assert value(samples, "ponder_in_flight_requests") == 0
    labels = (("route", "chat"), ("status", "200"), ("strategy", "none"))
    assert named(samples, "ponder_requests_total")[labels] == 1


async def test_metrics_need_the_key_and_never_show_it() -> None:
    canary = "sk-canary-7f3e9a"
    app = create_app(Settings(api_keys=f"acme:{canary}"), backend=scripted(["ok"]))
    async with asgi_client(app) as c:
        refused = await c.get("/metrics")
        wrong = await c.get("/metrics", headers={"authorization": "Bearer sk-wrong-canary"})
        ok = await c.post(
            "/v1/chat/completions",
            json=body(),
            headers={"authorization": f"Bearer {canary}", "x-request-id": "rid-canary-42"},
        )
        response = await c.get("/metrics", headers={"authorization": f"Bearer {canary}"})
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert ok.status_code == 200
    assert response.status_code == 200
    for secret in (canary, "sk-wrong-canary", "rid-canary-42", "acme"):
        assert secret not in response.text
    samples = parse(response.text)
    assert value(samples, "ponder_rejected_requests_total", reason="auth") == 2
    assert value(samples, "ponder_errors_total", strategy="-", type="invalid_api_key") == 2
    assert value(samples, "ponder_requests_total", route="metrics", strategy="-", status="401") == 2


async def test_metrics_are_outside_the_openapi_schema() -> None:
    async with asgi_client(create_app(Settings(), backend=scripted())) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert "/metrics" not in paths
    assert "/v1/chat/completions" in paths


async def test_two_apps_have_independent_registries() -> None:
    one, two = (
        create_app(Settings(), backend=scripted()),
        create_app(Settings(), backend=scripted()),
    )
    assert one.state.metrics.registry is not two.state.metrics.registry
    async with asgi_client(one) as a, asgi_client(two) as b:
        assert (await a.post("/v1/chat/completions", json=body())).status_code == 200
        first, second = await scrape(a), await scrape(b)
    assert len(named(first, "ponder_requests_total")) == 1
    assert named(second, "ponder_requests_total") == {}


async def asgi_stream_then_disconnect(app: FastAPI, payload: dict[str, Any]) -> list[int]:
    """Call `app` directly over ASGI with a streamed request; the client disconnects as soon as
    the first body bytes arrive. Returns the statuses the app started responses with."""
    raw = json.dumps(payload).encode()
    first_bytes = asyncio.Event()
    sent_request = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await first_bytes.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message.get("body"):
            first_bytes.set()

    scope = chat_scope()
    await asyncio.wait_for(app(scope, receive, send), 5)
    return statuses


async def test_a_client_disconnect_mid_stream_counts_499() -> None:
    backend = scripted(["4", "4", "4"])
    backend.hold()  # the samples never finish: only the disconnect ends the stream
    app = create_app(Settings(), backend=backend)
    statuses = await asgi_stream_then_disconnect(
        app, body(SC, stream=True, ponder={"sc": {"samples": 3}})
    )
    assert statuses == [200]
    async with asgi_client(app) as c:
        samples = await scrape(c)
    labels = (("route", "chat"), ("status", "499"), ("strategy", "sc"))
    assert named(samples, "ponder_requests_total") == {labels: 1.0}
    errors = named(samples, "ponder_errors_total")
    assert errors == {(("strategy", "sc"), ("type", "client_closed_request")): 1.0}
    assert value(samples, "ponder_in_flight_requests") == 0


def test_in_band_errors_are_found_only_at_an_event_start() -> None:
    event = b'data: {"error":{"message":"x","type":"api_error","code":"backend_timeout"}}\n\n'
    assert _in_band_code(event) == "backend_timeout"
    assert _in_band_code(b'data: {"id":"a"}\n\n' + event) == "backend_timeout"
    assert _in_band_code(b'data: {"id":"a","content":"data: {\\"error\\""}\n\n') is None


@pytest.mark.parametrize(
    ("slugs", "mode", "label"),
    [
        (("sc",), "single", "sc"),
        (("none",), "single", "none"),
        (("sc", "refine"), "pipeline", "sc&refine"),
        (("sc", "tot"), "parallel", "sc|tot"),
        (("sc", "sc", "sc", "sc"), "pipeline", "pipeline"),
    ],
)
def test_strategy_labels_are_bounded(slugs: tuple[str, ...], mode: Any, label: str) -> None:
    assert strategy_label(Route(MODEL, slugs, mode)) == label
