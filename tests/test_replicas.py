"""Two Ponder replicas on one PostgreSQL and one Redis: what one keeps, the other sees. A key
limited to 60 requests a minute gets 60 in total; a response stored through one replica is
continued through the other; SPL's counters stay exact with both learning at once."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.spl_store import Policy, Store
from ponder.spl_store import models as m
from ponder.testing import Call
from tests.conftest import MODEL, asgi_client, scripted, user
from tests.services import RedisServer, fresh_database

KEY = "tenant-a:key-a-0123456789"
AUTH = {"authorization": f"Bearer {KEY.split(':', 1)[1]}"}


def replica(
    database: str, redis: RedisServer, policy: Policy | None = None, **settings: Any
) -> FastAPI:
    """One Ponder process's app, with its own store object on the shared database."""
    store = Store(database, policy=policy)
    backend = scripted(lambda call, i: f"reply {i}: {call.prompt}")
    config = Settings(redis_url=redis.url, api_keys=[SecretStr(KEY)], **settings)
    return create_app(config, backend=backend, store=store)


async def test_a_key_gets_its_rate_once_across_two_replicas(
    postgres: str, redis: RedisServer
) -> None:
    database = fresh_database(postgres)
    a, b = (replica(database, redis, rate_limit_per_minute=60) for _ in range(2))
    body = {"model": MODEL, "messages": [user("hi")]}
    async with asgi_client(a) as ca, asgi_client(b) as cb:
        await redis_flush(redis)
        responses = await asyncio.gather(
            *(
                (ca if i % 2 else cb).post("/v1/chat/completions", json=body, headers=AUTH)
                for i in range(80)
            )
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 60 and statuses.count(429) == 20


async def test_a_response_stored_through_one_replica_continues_through_the_other(
    postgres: str, redis: RedisServer
) -> None:
    database = fresh_database(postgres)
    a, b = replica(database, redis), replica(database, redis)
    async with asgi_client(a) as ca, asgi_client(b) as cb:
        first = await ca.post(
            "/v1/responses",
            json={"model": MODEL, "input": "My name is Ada.", "instructions": "Be brief."},
            headers=AUTH,
        )
        assert first.status_code == 200, first.text
        rid = first.json()["id"]
        read = await cb.get(f"/v1/responses/{rid}", headers=AUTH)
        assert read.status_code == 200 and read.json()["id"] == rid
        second = await cb.post(
            "/v1/responses",
            json={"model": MODEL, "input": "What is my name?", "previous_response_id": rid},
            headers=AUTH,
        )
    assert second.status_code == 200, second.text
    (call,) = b.state.ponder.backend.calls
    assert [(m.role, m.text) for m in call.messages] == [
        ("user", "My name is Ada."),
        ("assistant", "reply 0: My name is Ada."),
        ("user", "What is my name?"),
    ]  # the first turn came from the database, through the other replica


async def test_spl_counters_stay_exact_with_two_replicas_learning_at_once(
    postgres: str, redis: RedisServer
) -> None:
    database = fresh_database(postgres)
    learning = Policy(client_learning=True)
    a, b = replica(database, redis, learning), replica(database, redis, learning)

    def answer(call: Call, index: int) -> str:
        return "The answer is 4."

    for app in (a, b):
        app.state.ponder.backend.replies = answer
    body = {
        "model": f"spl-{MODEL}",
        "messages": [user("What is 2 + 2?")],
        "ponder": {"spl": {"learn": True, "answer": "4"}},
    }
    async with asgi_client(a) as ca, asgi_client(b) as cb:
        responses = await asyncio.gather(
            *(
                (ca if i % 2 else cb).post("/v1/chat/completions", json=body, headers=AUTH)
                for i in range(20)
            )
        )
    assert all(r.status_code == 200 for r in responses), responses[0].text
    store = Store(database)
    try:
        with store.engine.connect() as conn:
            requests = conn.execute(
                select(m.SplRequest).where(m.SplRequest.tenant == "tenant-a")
            ).all()
        assert len(requests) == 20 and all(r.outcome is not None for r in requests)
        # every counter is exactly the requests that name it: none lost to a race
        for strategy in store.strategies("tenant-a"):
            used = [r for r in requests if not r.control and strategy.id in r.strategy_ids]
            assert strategy.attempts == len(used), strategy
            assert strategy.successes == sum(bool(r.outcome) for r in used)
        control = [r for r in requests if r.control]
        baselines = store.baselines("tenant-a").values()
        assert sum(b.attempts for b in baselines) == len(control)
    finally:
        store.close()


async def redis_flush(redis: RedisServer) -> None:
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(redis.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
