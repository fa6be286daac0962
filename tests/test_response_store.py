"""Stored Responses API responses on real SQLite and PostgreSQL: round trips of their JSON,
updates, status changes, deletion, pruning and tenant isolation."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from ponder.errors import InvalidRequest
from ponder.spl_store import Policy, ResponseRecord, Store


@pytest.fixture
def any_store(database_url: str) -> Iterator[Store]:
    """A fresh store on each real database, keeping responses for years (the tests date them
    in the past; the age limit has its own test)."""
    s = Store(database_url, policy=Policy(responses_max_age=dt.timedelta(days=3650)))
    yield s
    s.close()


def response(
    response_id: str = "resp_1",
    tenant: str = "t",
    *,
    status: Any = "completed",
    previous_id: str | None = None,
    text: str = "4",
    created_at: dt.datetime | None = None,
) -> ResponseRecord:
    output = [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    ]
    return ResponseRecord(
        id=response_id,
        tenant=tenant,
        model="ponder-cot",
        status=status,
        previous_id=previous_id,
        body={"id": response_id, "object": "response", "status": status, "output": output},
        conversation=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": text}],
        created_at=created_at or dt.datetime.now(dt.UTC),
    )


def test_a_saved_response_reads_back_as_it_was(any_store: Store) -> None:
    body: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Größe: 12 µm — ✓ 答え", "annotations": []}
                ],
            }
        ],
        "usage": {
            "input_tokens": 12,
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 3},
        },
        "metadata": {
            "k": None,
            "flag": True,
            "ratio": 0.25,
            "nested": {"list": [1, [2, {"x": "y"}]]},
        },
    }
    created = dt.datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
    record = dataclasses.replace(response(created_at=created), body=body, previous_id="resp_0")
    any_store.save_response(record)
    assert any_store.get_response("t", "resp_1") == record


def test_created_at_is_kept_in_utc(any_store: Store) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    created = dt.datetime(2025, 3, 1, 14, 0, tzinfo=plus_two)
    any_store.save_response(response(created_at=created))
    found = any_store.get_response("t", "resp_1")
    assert found is not None
    assert found.created_at == created
    assert found.created_at.utcoffset() == dt.timedelta(0)


def test_the_conversation_keeps_its_order(any_store: Store) -> None:
    turns: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        *({"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(20)),
        {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "2"},
    ]
    any_store.save_response(dataclasses.replace(response(), conversation=turns))
    found = any_store.get_response("t", "resp_1")
    assert found is not None and found.conversation == turns


def test_saving_the_same_id_again_updates_the_response(any_store: Store) -> None:
    created = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    any_store.save_response(response(status="in_progress", text="", created_at=created))
    done = response(status="completed", text="four", previous_id="resp_0")
    any_store.save_response(done)
    found = any_store.get_response("t", "resp_1")
    assert found is not None
    assert (found.status, found.previous_id) == ("completed", "resp_0")
    assert found.body == done.body and found.conversation == done.conversation
    assert found.created_at == created  # when it was first stored


def test_a_status_change_replaces_status_and_body(any_store: Store) -> None:
    any_store.save_response(response(status="in_progress"))
    body = {"id": "resp_1", "object": "response", "status": "cancelled", "output": []}
    changed = any_store.set_response_status("t", "resp_1", "cancelled", body)
    assert changed is not None and (changed.status, changed.body) == ("cancelled", body)
    assert any_store.get_response("t", "resp_1") == changed
    assert any_store.set_response_status("t", "resp_missing", "cancelled", body) is None


def test_an_unknown_status_is_refused(any_store: Store) -> None:
    with pytest.raises(InvalidRequest):
        any_store.save_response(response(status="done"))
    any_store.save_response(response())
    with pytest.raises(InvalidRequest):
        any_store.set_response_status("t", "resp_1", "done", {})  # type: ignore[arg-type]
    found = any_store.get_response("t", "resp_1")
    assert found is not None and found.status == "completed"


def test_an_overlong_id_is_refused(any_store: Store) -> None:
    with pytest.raises(InvalidRequest):
        any_store.save_response(response("resp_" + "x" * 200))
    with pytest.raises(InvalidRequest):
        any_store.save_response(response(""))


def test_delete(any_store: Store) -> None:
    any_store.save_response(response("resp_1"))
    any_store.save_response(response("resp_2"))
    assert any_store.delete_response("t", "resp_1")
    assert any_store.get_response("t", "resp_1") is None
    assert not any_store.delete_response("t", "resp_1")
    assert any_store.get_response("t", "resp_2") is not None


def test_another_tenants_response_is_never_reached(any_store: Store) -> None:
    mine = response("resp_1", "a", text="a's answer")
    any_store.save_response(mine)
    body = {"id": "resp_1", "status": "cancelled"}
    assert any_store.get_response("b", "resp_1") is None
    assert not any_store.delete_response("b", "resp_1")
    assert any_store.set_response_status("b", "resp_1", "cancelled", body) is None
    assert any_store.prune_responses("b", dt.timedelta(0)) == 0
    assert any_store.get_response("a", "resp_1") == mine


def test_the_same_id_in_two_tenants_is_two_responses(any_store: Store) -> None:
    first = response("resp_1", "a", text="a's answer")
    second = response("resp_1", "b", text="b's answer")
    any_store.save_response(first)
    any_store.save_response(second)
    assert any_store.get_response("a", "resp_1") == first
    assert any_store.get_response("b", "resp_1") == second
    assert any_store.delete_response("b", "resp_1")
    assert any_store.get_response("a", "resp_1") == first


def test_pruning_drops_only_the_tenants_old_responses(any_store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    any_store.save_response(response("resp_old", created_at=now - dt.timedelta(days=10)))
    any_store.save_response(response("resp_older", created_at=now - dt.timedelta(days=20)))
    any_store.save_response(response("resp_new", created_at=now - dt.timedelta(days=1)))
    any_store.save_response(response("resp_old", "other", created_at=now - dt.timedelta(days=20)))
    assert any_store.prune_responses("t", dt.timedelta(days=5)) == 2
    assert any_store.get_response("t", "resp_old") is None
    assert any_store.get_response("t", "resp_older") is None
    assert any_store.get_response("t", "resp_new") is not None
    assert any_store.get_response("other", "resp_old") is not None
    assert any_store.prune_responses("t", dt.timedelta(days=5)) == 0


def test_a_new_response_drops_the_tenants_responses_past_the_policys_age(
    any_store: Store,
) -> None:
    any_store.policy = Policy(responses_max_age=dt.timedelta(days=7))
    now = dt.datetime.now(dt.UTC)
    any_store.save_response(response("resp_a", created_at=now - dt.timedelta(days=6)))
    any_store.save_response(response("resp_b", "other", created_at=now - dt.timedelta(days=6)))
    any_store.policy = Policy(responses_max_age=dt.timedelta(days=5))
    any_store.save_response(response("resp_c"))
    assert any_store.get_response("t", "resp_a") is None  # past 5 days when resp_c came
    assert any_store.get_response("t", "resp_c") is not None
    assert any_store.get_response("other", "resp_b") is not None  # another tenant's: kept
