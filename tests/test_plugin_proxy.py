"""`proxy`, a plugin: the rest of the route runs against the server's pool of upstreams
(`proxy-model`, `proxy&sc-model`). Off unless PONDER_PROXY_CONFIG names a pool file; the file
(TOML or JSON) and the pool it builds; upstreams answered by handlers (HandlerUpstream), keys
from the environment and never in logs or errors. The pool's own rules are in tests/test_pool.py."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ponder.backends.base import Capabilities
from ponder.backends.pool import Upstream, UpstreamPool
from ponder.backends.pool_config import build_pool, load_pool_file
from ponder.backends.resilience import RetryPolicy
from ponder.config import Settings
from ponder.errors import BackendError, BackendUnavailable
from ponder.plugins.resources import server_resources
from ponder.proxy import create_app
from ponder.strategies.engine import Engine
from ponder.strategies.registry import default_registry
from ponder.testing import Call, HandlerUpstream, Reply, ScriptedBackend
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Message, Sampling
from tests.conftest import (
    MODEL,
    asgi_client,
    assert_error,
    chat,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    user,
)

KEY_A = "sk-alpha-secret-0001"
KEY_B = "sk-bravo-secret-0002"


def upstream(name: str, reply: Callable[[Call, int], Reply] | None = None) -> ScriptedBackend:
    return ScriptedBackend(reply or (lambda call, i: f"{name} says 4"), name=name)


def overloaded(call: Call, index: int) -> Reply:
    return BackendUnavailable("the engine is overloaded", retryable=True)


def pool_of(*backends: ScriptedBackend) -> UpstreamPool:
    return UpstreamPool(
        [Upstream(b.name, b) for b in backends],
        choice="round_robin",
        policy=RetryPolicy(retries=0),
    )


def proxying_app(main: ScriptedBackend, pool: UpstreamPool) -> FastAPI:
    """An app over `main` whose proxy plugin is lent `pool` (as PONDER_PROXY_CONFIG would)."""
    app = create_app(Settings(), backend=main)
    chat_service = app.state.ponder.chat
    chat_service.resources = {**chat_service.resources, "proxy": pool}
    return app


async def post(app: FastAPI, model: str, **fields: object) -> httpx.Response:
    fields.setdefault("messages", [user("hello")])
    async with asgi_client(app) as client:
        return await client.post("/v1/chat/completions", json={"model": model, **fields})


def tokens_of(
    backends: list[ScriptedBackend], reply: Callable[[str], str], answer: str
) -> dict[str, object]:
    """The usage of every call the upstreams got, each answered `reply(upstream's name)`, when
    the client's answer is the reply `answer` (the rest is reasoning)."""
    prompt = completion = 0
    for backend in backends:
        for call in backend.calls:
            prompt += count_prompt_tokens(call.messages)
            completion += count_tokens(reply(backend.name)) * call.n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": completion - count_tokens(answer)},
    }


# ---- through the API --------------------------------------------------------------------


async def test_the_plugin_is_off_until_the_operator_configures_a_pool() -> None:
    backend = scripted(["never"])
    response = await chat(backend, f"proxy&sc-{MODEL}")
    assert_error(response, 403, type="permission_error", code="permission_denied", param="model")
    assert "PONDER_PROXY_CONFIG" in response.json()["error"]["message"]
    assert backend.calls == []


async def test_proxy_sc_spreads_the_samples_over_the_upstreams() -> None:
    main = scripted(["never"])
    upstreams = [upstream(n) for n in "abc"]
    app = proxying_app(main, pool_of(*upstreams))
    response = await post(
        app, f"proxy&sc-{MODEL}", temperature=0.3, ponder={"sc": {"samples": 6}, "trace": True}
    )

    assert response.status_code == 200
    body = response.json()
    assert [len(u.calls) for u in upstreams] == [2, 2, 2]
    assert main.calls == []
    calls = [call for u in upstreams for call in u.calls]
    assert {(c.model, c.messages[-1].text, c.n) for c in calls} == {(MODEL, "hello", 1)}
    assert response.headers["x-ponder-backend-calls"] == "6"
    answer = body["choices"][0]["message"]["content"]
    assert answer in {f"{name} says 4" for name in "abc"}
    assert body["usage"] == tokens_of(upstreams, lambda name: f"{name} says 4", answer)
    (proxy,) = trace_steps(body, "proxy")
    assert (proxy["strategy"], proxy["upstreams"]) == ("round_robin", 3)
    served = trace_steps(body, "proxy_upstream")
    assert Counter(s["upstream"] for s in served) == {"a": 2, "b": 2, "c": 2}
    assert {s["error"] for s in served} == {None}
    (vote,) = trace_steps(body, "vote")
    assert vote["survivors"] == 6  # sc ran inside the plugin, over every sample


async def test_samples_spread_even_over_native_n_upstreams_unless_told_not_to() -> None:
    native = Capabilities(native_n=True)
    a = ScriptedBackend(lambda call, i: "4", name="a", capabilities=native)
    b = ScriptedBackend(lambda call, i: "4", name="b", capabilities=native)
    app = proxying_app(scripted(["never"]), pool_of(a, b))
    response = await post(app, f"proxy&sc-{MODEL}", ponder={"sc": {"samples": 4}})
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert [[c.n for c in u.calls] for u in (a, b)] == [[1, 1], [1, 1]]

    a.calls.clear()
    b.calls.clear()
    response = await post(
        app, f"proxy&sc-{MODEL}", ponder={"sc": {"samples": 4}, "proxy": {"spread_samples": False}}
    )
    assert response.status_code == 200
    assert response.headers["x-ponder-backend-calls"] == "1"
    assert [[c.n for c in u.calls] for u in (a, b)] == [[4], []]  # a's turn again, all four at once


async def test_the_client_may_choose_the_strategy_and_a_bad_one_is_a_400() -> None:
    a, b = upstream("a"), upstream("b")
    app = proxying_app(scripted(["never"]), pool_of(a, b))
    response = await post(
        app, f"proxy&sc-{MODEL}", ponder={"sc": {"samples": 3}, "proxy": {"strategy": "failover"}}
    )
    assert response.status_code == 200
    assert (len(a.calls), len(b.calls)) == (3, 0)

    response = await post(app, f"proxy-{MODEL}", ponder={"proxy": {"strategy": "random"}})
    assert_error(response, 400, type="invalid_request_error", param="ponder.proxy.strategy")
    assert (len(a.calls), len(b.calls)) == (3, 0)


async def test_a_stream_fails_over_before_its_first_delta_and_says_so() -> None:
    a = upstream("a", overloaded)
    b = upstream("b", lambda call, i: "Hello from the second upstream")
    app = proxying_app(scripted(["never"]), pool_of(a, b))
    response = await post(
        app, f"proxy-{MODEL}", stream=True, stream_options={"include_usage": True}
    )

    assert response.status_code == 200
    assert streamed_text(response.text) == "Hello from the second upstream"
    assert streamed_text(response.text, "reasoning_content") == (
        "Upstream a failed (backend_unavailable).\n"
    )
    (usage,) = [e["usage"] for e in sse_events(response.text) if e.get("usage")]
    assert usage == tokens_of(
        [b], lambda name: "Hello from the second upstream", "Hello from the second upstream"
    )
    assert (len(a.calls), len(b.calls)) == (1, 1)


async def test_when_every_upstream_fails_the_error_says_how_many_were_tried() -> None:
    a, b = upstream("a", overloaded), upstream("b", overloaded)
    app = proxying_app(scripted(["never"]), pool_of(a, b))
    response = await post(app, f"proxy&sc-{MODEL}", ponder={"sc": {"samples": 1}})
    assert_error(
        response,
        503,
        type="api_error",
        code="backend_unavailable",
        message="no upstream could answer: all 2 upstreams tried, 2 requests; "
        "the last error: the engine is overloaded",
    )
    assert (len(a.calls), len(b.calls)) == (1, 1)


# ---- the pool file ----------------------------------------------------------------------


class Http:
    """Fake OpenAI-compatible upstreams, by name: what each was sent."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def upstream(self, name: str) -> HandlerUpstream:
        def handle(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            self.sent.append((name, request.headers.get("authorization", ""), body))
            if name in self.failing:
                key = request.headers.get("authorization", "").removeprefix("Bearer ")
                error = {"message": f"overloaded (key {key})", "type": "server_error"}
                return httpx.Response(503, json={"error": error})
            message = {"role": "assistant", "content": f"{name} answered"}
            return httpx.Response(
                200,
                json={
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
                },
            )

        return HandlerUpstream(handle)


POOL_TOML = """
strategy = "failover"
cooldown_s = 60

[[upstreams]]
name = "alpha"
base_url = "http://alpha.internal:8000/v1"
api_key_env = "ALPHA_KEY"
weight = 2
max_concurrency = 4
models = { "smollm2-135m" = "alpha-model" }

[[upstreams]]
base_url = "https://bravo.internal:9000/v1"
api_key_env = "BRAVO_KEY"
"""


def pool_file(tmp_path: Path, text: str = POOL_TOML, suffix: str = ".toml") -> Path:
    path = tmp_path / f"pool{suffix}"
    path.write_text(text)
    return path


async def test_a_refused_key_names_the_variable_it_came_from(tmp_path: Path) -> None:
    """An upstream that refuses its key says which variable to check (not the single
    upstream's PONDER_UPSTREAM_API_KEY), and never the key."""

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    settings = Settings(proxy_config=pool_file(tmp_path), upstream_retries=0)
    env = {"ALPHA_KEY": KEY_A, "BRAVO_KEY": KEY_B}
    pool = build_pool(settings, env=env, http={"alpha": HandlerUpstream(refuse)})
    alpha = pool.upstreams[0].backend
    with pytest.raises(BackendError) as info:
        await alpha.complete("alpha-model", [Message("user", "hi")], Sampling())
    assert info.value.message == (
        "the upstream rejected Ponder's credentials; check ALPHA_KEY "
        "(upstream 'alpha' of PONDER_PROXY_CONFIG)"
    )


async def test_the_pool_file_builds_upstreams_with_keys_from_the_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http = Http(failing={"alpha"})
    settings = Settings(proxy_config=pool_file(tmp_path), upstream_retries=0)
    pool = build_pool(
        settings,
        env={"ALPHA_KEY": KEY_A, "BRAVO_KEY": KEY_B},
        http={"alpha": http.upstream("alpha"), "bravo.internal:9000": http.upstream("b")},
    )
    assert [(u.name, u.weight, u.max_concurrency) for u in pool.upstreams] == [
        ("alpha", 2, 4),
        ("bravo.internal:9000", 1, 16),  # named by its host and port
    ]
    assert (pool.choice, pool.cooldown_s, pool.policy.retries) == ("failover", 60.0, 0)

    response = await post(proxying_app(scripted(["never"]), pool), f"proxy-{MODEL}")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "b answered"
    assert response.json()["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }  # b's answer
    assert [(name, auth, body["model"]) for name, auth, body in http.sent] == [
        ("alpha", f"Bearer {KEY_A}", "alpha-model"),  # failed over after its 503
        ("b", f"Bearer {KEY_B}", MODEL),
    ]
    assert pool.is_down("alpha")

    http.failing = {"alpha", "b"}
    pool = build_pool(
        settings,
        env={"ALPHA_KEY": KEY_A, "BRAVO_KEY": KEY_B},
        http={"alpha": http.upstream("alpha"), "bravo.internal:9000": http.upstream("b")},
    )
    response = await post(proxying_app(scripted(["never"]), pool), f"proxy-{MODEL}")
    assert_error(response, 503, code="backend_unavailable")
    message = response.json()["error"]["message"]
    assert message.startswith("no upstream could answer: all 2 upstreams tried, 2 requests")
    for secret in (KEY_A, KEY_B):
        assert secret not in response.text
        assert secret not in caplog.text
    assert "upstream alpha is down" in caplog.text


def test_a_json_pool_file_with_the_defaults(tmp_path: Path) -> None:
    text = json.dumps({"upstreams": [{"base_url": "http://one:8000/v1"}]})
    config = load_pool_file(pool_file(tmp_path, text, ".json"))
    assert (config.strategy, config.cooldown_s, config.health_check) == ("weighted", 30.0, False)
    (entry,) = config.upstreams
    assert (entry.label(), entry.weight, entry.max_concurrency, entry.api_key_env) == (
        "one:8000",
        1,
        16,
        None,
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[[upstreams]]\nbase_url = "http://a/v1"\napi_key = "sk-inline-9999"\n',
            "upstreams.0.api_key: keys are not written in this file: put it in an environment "
            "variable and name that variable in `api_key_env`",
        ),
        ('[[upstreams]]\nbase_url = "ftp://a/v1"\n', "upstreams.0.base_url: Value error, must be"),
        (
            '[[upstreams]]\nbase_url = "http://a:x/v1"\n',
            "upstreams.0.base_url: Value error, is not",
        ),
        (
            '[[upstreams]]\nbase_url = "http://me:sk-inline-9999@a/v1"\n',
            "upstreams.0.base_url: Value error, credentials are not written in the URL",
        ),
        (
            'strategy = "random"\n[[upstreams]]\nbase_url = "http://a/v1"\n',
            "strategy: Input should be 'weighted', 'round_robin' or 'failover'",
        ),
        ('[[upstreams]]\nbase_url = "http://a/v1"\nweight = 0\n', "upstreams.0.weight: Input"),
        ("upstreams = []\n", "upstreams: List should have at least 1 item"),
        ("strategy = \n", "is not valid"),
    ],
)
def test_a_bad_pool_file_stops_the_server_with_the_field_and_no_secret(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = pool_file(tmp_path, text)
    with pytest.raises(ValueError, match="PONDER_PROXY_CONFIG") as info:
        create_app(Settings(proxy_config=path), backend=scripted())
    assert problem in str(info.value)
    assert "sk-inline-9999" not in str(info.value)


def test_a_missing_key_variable_or_file_or_duplicate_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALPHA_KEY", raising=False)
    with pytest.raises(ValueError) as info:
        build_pool(Settings(proxy_config=pool_file(tmp_path)), env={"BRAVO_KEY": KEY_B})
    assert str(info.value) == (
        "PONDER_PROXY_CONFIG: upstream 'alpha' takes its key from the environment variable "
        "ALPHA_KEY, which is not set"
    )
    with pytest.raises(ValueError, match="cannot read"):
        build_pool(Settings(proxy_config=tmp_path / "absent.toml"))
    twice = '[[upstreams]]\nbase_url = "http://a:1/v1"\n[[upstreams]]\nbase_url = "http://a:1/v1"\n'
    with pytest.raises(ValueError, match="both called 'a:1'"):
        build_pool(Settings(proxy_config=pool_file(tmp_path, twice)))
    with pytest.raises(ValueError, match=r"must end in \.json or \.toml"):
        load_pool_file(pool_file(tmp_path, "{}", ".yaml"))


async def test_the_server_lends_the_pool_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALPHA_KEY", KEY_A)
    monkeypatch.setenv("BRAVO_KEY", KEY_B)
    engine = Engine(default_registry())
    assert "proxy" not in server_resources(Settings(), scripted(), engine)
    settings = Settings(proxy_config=pool_file(tmp_path), upstream_retries=3)
    pool = server_resources(settings, scripted(), engine)["proxy"]
    assert isinstance(pool, UpstreamPool)
    assert [u.name for u in pool.upstreams] == ["alpha", "bravo.internal:9000"]
    assert pool.policy.retries == 3
    assert pool.capabilities.max_concurrency == 20
    await pool.aclose()


def test_the_pools_window_is_the_smallest_its_upstreams_state(tmp_path: Path) -> None:
    """A call may go to any upstream, so the pool holds the smallest window; one upstream that
    states none leaves the pool without one."""
    env = {"ALPHA_KEY": KEY_A, "BRAVO_KEY": KEY_B}
    both = POOL_TOML.replace("weight = 2", "weight = 2\ncontext_window = 32768").replace(
        'api_key_env = "BRAVO_KEY"', 'api_key_env = "BRAVO_KEY"\ncontext_window = 8192'
    )
    pool = build_pool(Settings(proxy_config=pool_file(tmp_path, both)), env=env)
    assert [u.backend.capabilities.context_window for u in pool.upstreams] == [32768, 8192]
    assert pool.capabilities.context_window == 8192
    one = POOL_TOML.replace("weight = 2", "weight = 2\ncontext_window = 32768")
    pool = build_pool(Settings(proxy_config=pool_file(tmp_path, one)), env=env)
    assert pool.capabilities.context_window is None
