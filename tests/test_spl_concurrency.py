"""32 concurrent learning requests x 20 rounds through the running server, on SQLite and on
PostgreSQL: no lost counter update, no duplicate id, no error reaching a client."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.spl_store import Store
from ponder.spl_store import models as m
from ponder.testing import Call, running_server
from tests.conftest import MODEL, scripted, user

WORKERS, ROUNDS = 32, 20


def reply(call: Call, _: int) -> str:
    """The model's side: a type for the classifier, steps for a strategy writer, else an
    answer that is right for even-numbered questions."""
    prompt = call.prompt
    if prompt.startswith("Classify the problem"):
        return "arithmetic"
    if prompt.startswith(("Write a short", "Combine these", "The strategy below")):
        return "1. Write down every quantity.\n2. Combine them one step at a time."
    if prompt.startswith("Is the proposed answer"):
        return "YES"
    number = int(prompt.split()[-1].rstrip("?"))
    return f"The answer is {number if number % 2 == 0 else number + 1}."


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    s.configure_tenant("default", learning=True)
    yield s
    s.close()


async def test_concurrent_learning_requests_lose_nothing(store: Store) -> None:
    backend = scripted(reply)
    statuses: Counter[int] = Counter()
    truth: dict[str, bool] = {}
    with running_server(create_app(Settings(), backend=backend, store=store)) as url:
        limits = httpx.Limits(max_connections=WORKERS)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

            async def ask(number: int) -> None:
                body = {
                    "model": f"spl-{MODEL}",
                    "messages": [user(f"What is half of twice {number}?")],
                    "ponder": {"spl": {"answer": str(number)}},
                }
                response = await client.post("/chat/completions", json=body)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    truth[response.headers["x-request-id"]] = number % 2 == 0

            for round_ in range(ROUNDS):
                await asyncio.gather(*(ask(round_ * WORKERS + w) for w in range(WORKERS)))

    assert statuses == {200: WORKERS * ROUNDS}
    with store.engine.connect() as conn:
        requests = conn.execute(
            select(m.SplRequest.id, m.SplRequest.request_id, m.SplRequest.strategy_ids,
                   m.SplRequest.outcome)
        ).all()  # fmt: skip
        strategies = conn.execute(
            select(m.Strategy.id, m.Strategy.attempts, m.Strategy.successes)
        ).all()
        event_ids = conn.execute(select(m.LearningEvent.id)).scalars().all()
    # every request was recorded once, with the outcome its ground truth gave
    assert len(requests) == WORKERS * ROUNDS
    assert len({r.id for r in requests}) == len({r.request_id for r in requests}) == len(requests)
    assert {r.request_id: r.outcome for r in requests} == truth
    # each strategy's counters equal the requests that used it: no update lost
    used: Counter[int] = Counter(i for r in requests for i in r.strategy_ids)
    won: Counter[int] = Counter(i for r in requests if r.outcome for i in r.strategy_ids)
    assert sum(used.values()) > 0
    for strategy_id, attempts, successes in strategies:
        assert (attempts, successes) == (used[strategy_id], won[strategy_id]), strategy_id
    assert len(event_ids) == len(set(event_ids))
