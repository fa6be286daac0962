"""Two Ponder replicas, each `ponder serve` in a process of its own, on one PostgreSQL and one
Redis, in front of one upstream: what one keeps, the other sees. A key limited to 60 requests a
minute gets 60 in total; a response stored through one replica is continued through the other;
SPL's counters stay exact with both learning at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ponder.spl_store import Store
from ponder.spl_store import models as m
from ponder.testing import FakeUpstream, running_server
from tests.services import RedisServer, fresh_database, ponder_process

# One key per test, so that no test spends another's rate (60 requests a minute per key).
RATE = "tenant-rate:key-rate-0123456789"
RESPONSES = "tenant-responses:key-responses-0123456789"
SPL = "tenant-spl:key-spl-0123456789"
MODEL = "fake-model"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key.split(':', 1)[1]}"}


def reply(body: dict[str, Any], index: int) -> str:
    last = body["messages"][-1]["content"]
    return "The answer is 4." if "2 + 2" in str(last) else f"reply {index}: {last}"


@pytest.fixture(scope="module")
def cluster(postgres: str, redis: RedisServer) -> Iterator[tuple[FakeUpstream, str, list[str]]]:
    """The upstream, the shared database's URL, and the two replicas' base URLs."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis.url).flushdb()
    database = fresh_database(postgres)
    upstream = FakeUpstream(reply)
    env = {
        "PONDER_DATABASE_URL": database,
        "PONDER_REDIS_URL": redis.url,
        "PONDER_API_KEYS": ",".join((RATE, RESPONSES, SPL)),
        "PONDER_RATE_LIMIT_PER_MINUTE": "60",
        "PONDER_SPL_CLIENT_LEARNING": "true",
    }
    with running_server(upstream.app) as upstream_url:
        args = ("--backend", "openai", "--base-url", upstream_url)
        with ponder_process(env, *args) as a, ponder_process(env, *args) as b:
            yield upstream, database, [a, b]


async def post_alternately(
    replicas: list[str], path: str, body: dict[str, Any], key: str, count: int
) -> list[httpx.Response]:
    """`count` requests at once, every other one to each replica."""
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(f"{replicas[i % 2]}{path}", json=body, headers=auth(key))
                for i in range(count)
            )
        )


async def test_a_key_gets_its_rate_once_across_two_replicas(
    cluster: tuple[FakeUpstream, str, list[str]],
) -> None:
    _, _, replicas = cluster
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    responses = await post_alternately(replicas, "/v1/chat/completions", body, RATE, 80)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 60 and statuses.count(429) == 20
    # and the minute is spent on both: one more request to each is refused
    more = [*responses, *await post_alternately(replicas, "/v1/chat/completions", body, RATE, 2)]
    assert [r.status_code for r in more[-2:]] == [429, 429]
    refused = [r for r in more if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}


async def test_a_response_stored_through_one_replica_continues_through_the_other(
    cluster: tuple[FakeUpstream, str, list[str]],
) -> None:
    upstream, _, (a, b) = cluster
    async with httpx.AsyncClient(timeout=60, headers=auth(RESPONSES)) as client:
        first = await client.post(
            f"{a}/v1/responses",
            json={"model": MODEL, "input": "My name is Ada.", "instructions": "Be brief."},
        )
        assert first.status_code == 200, first.text
        rid = first.json()["id"]
        read = await client.get(f"{b}/v1/responses/{rid}")
        assert read.status_code == 200 and read.json()["id"] == rid
        second = await client.post(
            f"{b}/v1/responses",
            json={"model": MODEL, "input": "What is my name?", "previous_response_id": rid},
        )
    assert second.status_code == 200, second.text
    # the first turn came from the database, through the other replica (its instructions do
    # not carry over, as the Responses API has it)
    assert upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "reply 0: My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_spl_counters_stay_exact_with_two_replicas_learning_at_once(
    cluster: tuple[FakeUpstream, str, list[str]],
) -> None:
    _, database, replicas = cluster
    body = {
        "model": f"spl-{MODEL}",
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "ponder": {"spl": {"learn": True, "answer": "4"}},
    }
    responses = await post_alternately(replicas, "/v1/chat/completions", body, SPL, 20)
    assert all(r.status_code == 200 for r in responses), responses[0].text
    store = Store(database)
    try:
        with store.engine.connect() as conn:
            requests = conn.execute(
                select(m.SplRequest).where(m.SplRequest.tenant == "tenant-spl")
            ).all()
        assert len(requests) == 20 and all(r.outcome is not None for r in requests)
        # every counter is exactly the requests that name it: none lost to a race
        for strategy in store.strategies("tenant-spl"):
            used = [r for r in requests if not r.control and strategy.id in r.strategy_ids]
            assert strategy.attempts == len(used), strategy
            assert strategy.successes == sum(bool(r.outcome) for r in used)
        control = [r for r in requests if r.control]
        baselines = store.baselines("tenant-spl").values()
        assert sum(b.attempts for b in baselines) == len(control)
    finally:
        store.close()
