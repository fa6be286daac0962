from __future__ import annotations

from pathlib import Path

import pytest

from ponder.cli import parser, settings_from
from ponder.config import Settings
from ponder.keys import Keyring
from ponder.proxy import create_app
from ponder.spl_store import Store
from tests.conftest import MODEL, asgi_client, scripted, user


async def test_api_keys_are_required_when_configured() -> None:
    app = create_app(Settings(api_keys="k-one,k-two"), backend=scripted(lambda c, i: "ok"))
    async with asgi_client(app) as c:
        body = {"model": MODEL, "messages": [user("hi")]}
        missing = await c.post("/v1/chat/completions", json=body)
        wrong = await c.post(
            "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}
        )
        right = await c.post(
            "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k-two"}
        )
        health = await c.get("/health/live")
        bare = await c.get("/health")  # where health checks written for other proxies look
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert "k-one" not in response.text and "k-two" not in response.text
    assert right.status_code == 200
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("host", "keys", "allowed"),
    [
        ("127.0.0.1", "", True),
        ("localhost", "", True),
        ("::1", "", True),
        ("0.0.0.0", "", False),
        ("192.168.1.5", "", False),
        ("0.0.0.0", "secret", True),
    ],
)
def test_refuses_to_listen_beyond_loopback_without_keys(
    host: str, keys: str, allowed: bool
) -> None:
    assert may_listen(Settings(host=host, api_keys=keys)) is allowed


def may_listen(settings: Settings) -> bool:
    """Whether `ponder serve` would listen with `settings` (it refuses beyond loopback
    without keys, saying so)."""
    try:
        settings.check_exposure(len(Keyring.from_settings(settings)))
    except ValueError as exc:
        assert "without API keys" in str(exc)
        return False
    return True


def test_cli_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_PORT", "9000")
    monkeypatch.setenv("PONDER_BACKEND", "openai")
    monkeypatch.setenv("PONDER_BASE_URL", "http://env/v1")
    args = parser().parse_args(["serve", "--port", "8123", "--base-url", "http://flag/v1"])
    settings = settings_from(args)
    assert (settings.port, settings.backend, settings.base_url) == (
        8123,
        "openai",
        "http://flag/v1",
    )
    assert settings.host == "127.0.0.1"


def test_secrets_are_not_in_settings_repr() -> None:
    settings = Settings(api_keys="k-secret", upstream_api_key="sk-secret")
    assert "k-secret" not in repr(settings) and "sk-secret" not in repr(settings)


async def test_health_ready_reflects_the_backend() -> None:
    backend = scripted()
    app = create_app(Settings(), backend=backend)
    async with asgi_client(app) as c:
        assert (await c.get("/health/ready")).status_code == 200

        async def not_ready() -> bool:
            return False

        backend.ready = not_ready  # type: ignore[method-assign]
        response = await c.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"


async def test_health_ready_reflects_the_database(tmp_path: Path) -> None:
    good = create_app(Settings(), backend=scripted(), store=Store(f"sqlite:///{tmp_path}/ok.db"))
    async with asgi_client(good) as c:
        response = await c.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "backend": "scripted", "database": "ok"}

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's directory should be")
    bad = create_app(Settings(), backend=scripted(), store=Store(f"sqlite:///{blocked}/x.db"))
    async with asgi_client(bad) as c:
        response = await c.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
