"""`/v1/ponder/spl/strategies`, `/v1/ponder/feedback` and `/ui/spl` over HTTP (in-process)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.spl_store import Draft, Lifecycle, Store
from tests.conftest import asgi_client, assert_error, scripted

KEYS = Settings(api_keys=["a:key-a", "b:key-b"])
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """Two tenants, a and b, each with its own key, over `store`."""
    async with asgi_client(create_app(KEYS, backend=scripted(["x"]), store=store)) as c:
        yield c


def add(store: Store, tenant: str, problem_type: str, text: str, **draft: Any) -> int:
    record = store.add_strategy(tenant, Draft(problem_type, text, **draft), origin="learned")
    assert record is not None
    return record.id


# ---- strategies ---------------------------------------------------------------------------


async def test_strategies_lists_only_the_keys_tenant(
    client: httpx.AsyncClient, store: Store
) -> None:
    a1 = add(store, "a", "logic", "List the facts.", status="active", attempts=4, successes=3)
    a2 = add(store, "a", "arithmetic", "Check units.")
    b1 = add(store, "b", "logic", "B's own strategy.")

    r = await client.get("/v1/ponder/spl/strategies", headers=A)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [d["id"] for d in body["data"]] == [a2, a1]  # by problem type, then id
    first = body["data"][1]
    created = dt.datetime.fromisoformat(first.pop("created_at"))
    assert created.tzinfo is not None
    assert dt.datetime.fromisoformat(first.pop("updated_at")) >= created
    assert first == {
        "object": "ponder.spl.strategy",
        "id": a1,
        "problem_type": "logic",
        "status": "active",
        "origin": "learned",
        "parent_id": None,
        "version": 1,
        "attempts": 4,
        "successes": 3,
        "success_rate": 0.75,
        "text": "List the facts.",
    }

    r = await client.get("/v1/ponder/spl/strategies", headers=B)
    assert [d["id"] for d in r.json()["data"]] == [b1]


async def test_strategies_filters(client: httpx.AsyncClient, store: Store) -> None:
    a1 = add(store, "a", "logic", "One.", status="active")
    a2 = add(store, "a", "logic", "Two.")
    a3 = add(store, "a", "arithmetic", "Three.", status="active")

    async def ids(query: str) -> list[int]:
        r = await client.get(f"/v1/ponder/spl/strategies?{query}", headers=A)
        assert r.status_code == 200
        return [d["id"] for d in r.json()["data"]]

    assert await ids("status=active") == [a3, a1]
    assert await ids("problem_type=logic") == [a1, a2]
    assert await ids("problem_type=logic&status=candidate") == [a2]
    assert await ids("problem_type=&status=") == [a3, a1, a2]
    assert await ids("problem_type=coding") == []


@pytest.mark.parametrize(
    ("query", "param"), [("status=sleeping", "status"), ("problem_type=astrology", "problem_type")]
)
async def test_strategies_bad_filter_is_400(
    client: httpx.AsyncClient, query: str, param: str
) -> None:
    r = await client.get(f"/v1/ponder/spl/strategies?{query}", headers=A)
    assert_error(r, 400, type="invalid_request_error", param=param)


async def test_knowledge_routes_need_a_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/ponder/spl/strategies")
    assert_error(r, 401, code="invalid_api_key")
    r = await client.post(
        "/v1/ponder/feedback",
        json={"request_id": "x", "correct": True},
        headers={"Authorization": "Bearer wrong"},
    )
    assert_error(r, 401, code="invalid_api_key")


# ---- feedback -----------------------------------------------------------------------------


async def test_feedback_updates_the_strategies_the_request_used(
    client: httpx.AsyncClient, store: Store
) -> None:
    s1 = add(store, "a", "logic", "One.", status="active")
    s2 = add(store, "a", "logic", "Two.")
    store.record_request("a", "req1", "logic", "Who lies?", "Bob.", [s1, s2])

    r = await client.post(
        "/v1/ponder/feedback", json={"request_id": "chatcmpl-req1", "correct": True}, headers=A
    )
    assert r.status_code == 200
    assert r.json() == {
        "request_id": "req1",
        "applied": True,
        "outcome": True,
        "source": "feedback",
        "promoted": [],
        "retired": [],
        "episodes": 0,
    }
    assert [(s.attempts, s.successes) for s in store.strategies("a")] == [(1, 1), (1, 1)]
    assert store.events("a", s1)[0].kind == "success"

    # a change of mind corrects the successes; the attempt is not counted twice
    r = await client.post(
        "/v1/ponder/feedback", json={"request_id": "req1", "correct": False}, headers=A
    )
    assert r.json()["applied"] is True
    assert r.json()["outcome"] is False
    assert [(s.attempts, s.successes) for s in store.strategies("a")] == [(1, 0), (1, 0)]

    # the same feedback again changes nothing
    r = await client.post(
        "/v1/ponder/feedback", json={"request_id": "req1", "correct": False}, headers=A
    )
    assert (r.json()["applied"], r.json()["outcome"]) == (False, False)
    assert [(s.attempts, s.successes) for s in store.strategies("a")] == [(1, 0), (1, 0)]


async def test_feedback_does_not_override_ground_truth(
    client: httpx.AsyncClient, store: Store
) -> None:
    s1 = add(store, "a", "logic", "One.")
    store.record_request("a", "req1", "logic", "q", "a", [s1])
    store.record_outcome("a", "req1", True, "ground_truth")
    r = await client.post(
        "/v1/ponder/feedback", json={"request_id": "req1", "correct": False}, headers=A
    )
    assert r.status_code == 200
    assert (r.json()["applied"], r.json()["outcome"], r.json()["source"]) == (
        False,
        True,
        "ground_truth",
    )
    assert (store.strategy("a", s1).attempts, store.strategy("a", s1).successes) == (1, 1)


async def test_feedback_reports_promotion(store: Store) -> None:
    quick = Store(store.url, lifecycle=Lifecycle(promote_after=1, explore=0))
    s1 = add(quick, "default", "logic", "One.")
    quick.record_request("default", "r", "logic", "q", "a", [s1])
    async with asgi_client(create_app(Settings(), backend=scripted(["x"]), store=quick)) as c:
        r = await c.post("/v1/ponder/feedback", json={"request_id": "r", "correct": True})
    assert r.json()["promoted"] == [s1]
    assert quick.strategy("default", s1).status == "active"
    assert quick.events("default", s1)[0].kind == "promoted"
    quick.close()


async def test_feedback_on_an_unknown_or_other_tenants_request_is_404(
    client: httpx.AsyncClient, store: Store
) -> None:
    s1 = add(store, "a", "logic", "One.")
    store.record_request("a", "req1", "logic", "q", "a", [s1])
    store.add_episode(
        "a", "conv", "req1", "q", "a", b"", max_episodes=10, max_age=dt.timedelta(days=1)
    )

    for unknown in ("nope", "chatcmpl-" + "r" * 128):
        r = await client.post(
            "/v1/ponder/feedback", json={"request_id": unknown, "correct": True}, headers=A
        )
        assert_error(r, 404, code="not_found", param="request_id")

    r = await client.post(
        "/v1/ponder/feedback", json={"request_id": "req1", "correct": False}, headers=B
    )
    assert_error(r, 404, code="not_found", param="request_id")
    assert (store.strategy("a", s1).attempts, store.strategy("a", s1).successes) == (0, 0)
    assert store.request_outcome("a", "req1") == (None, None)
    assert [e.outcome for e in store.episodes("a")] == [None]


async def test_feedback_on_a_memory_episode(client: httpx.AsyncClient, store: Store) -> None:
    for conversation in ("c1", "c2"):
        store.add_episode(
            "a", conversation, "m1", "q", "a", b"", max_episodes=10, max_age=dt.timedelta(days=1)
        )
    store.add_episode("a", "c1", "m2", "q", "a", b"", max_episodes=10, max_age=dt.timedelta(days=1))

    r = await client.post(
        "/v1/ponder/feedback", json={"request_id": "chatcmpl-m1", "correct": False}, headers=A
    )
    assert r.status_code == 200
    assert r.json() == {
        "request_id": "m1",
        "applied": True,
        "outcome": False,
        "source": "feedback",
        "promoted": [],
        "retired": [],
        "episodes": 2,
    }
    assert {(e.request_id, e.outcome) for e in store.episodes("a")} == {
        ("m1", False),
        ("m2", None),
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "r", "correct": "yes"}, "correct"),
        ({"request_id": "r"}, "correct"),
        ({"request_id": "", "correct": True}, "request_id"),
        ({"request_id": "chatcmpl-", "correct": True}, "request_id"),
        ({"request_id": "r", "correct": True, "note": "x"}, "note"),
        ({"request_id": "chatcmpl-" + "r" * 129, "correct": True}, "request_id"),
    ],
)
async def test_feedback_body_is_validated(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    r = await client.post("/v1/ponder/feedback", json=body, headers=A)
    assert_error(r, 400, type="invalid_request_error", param=param)


# ---- /ui/spl (the HTML; tests/test_ui_browser.py renders it in a browser) ------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_ui_needs_a_key_when_keys_are_configured(
    client: httpx.AsyncClient, store: Store
) -> None:
    add(store, "a", "logic", "A's strategy.")
    add(store, "b", "logic", "B's strategy.")
    for headers in ({}, {"Authorization": "Bearer wrong"}, basic("a", "wrong"), basic("a", "")):
        r = await client.get("/ui/spl", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="ponder"'
        assert "A&#x27;s" not in r.text and "B&#x27;s" not in r.text
    r = await client.get("/ui/spl", headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401

    r = await client.get("/ui/spl", headers=basic("anyone", "key-b"))
    assert r.status_code == 200
    assert "B&#x27;s strategy." in r.text
    assert "A&#x27;s" not in r.text
    r = await client.get("/ui/spl", headers=A)
    assert "A&#x27;s strategy." in r.text
    assert "B&#x27;s" not in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]


async def test_ui_escapes_text_and_filters_by_status(store: Store) -> None:
    s1 = add(
        store, "default", "coding", '<script>alert("x")</script>\nsecond line', status="active"
    )
    s2 = add(store, "default", "coding", "Plain & simple.")
    store.record_request("default", "<img>", "coding", "q", "a", [s1])
    store.record_outcome("default", "<img>", True, "feedback")
    app = create_app(Settings(), backend=scripted(["x"]), store=store)
    async with asgi_client(app) as c:
        page = (await c.get("/ui/spl")).text
        assert "<script>" not in page and "<img>" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;\nsecond line" in page
        assert "request &lt;img&gt;" in page
        assert f'id="strategy-{s1}"' in page and f'id="strategy-{s2}"' in page
        assert '<b id="tenant">default</b>' in page

        page = (await c.get("/ui/spl?status=candidate")).text
        assert f'id="strategy-{s2}"' in page
        assert f'id="strategy-{s1}"' not in page

        r = await c.get("/ui/spl?status=sleeping")
        assert_error(r, 400, param="status")
