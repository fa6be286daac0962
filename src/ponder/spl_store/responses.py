"""The stored-response methods of `Store` (a mixin: `Store` supplies the engine)."""

from __future__ import annotations

import datetime as dt
from typing import Any, get_args

from sqlalchemy import Engine, delete

from ponder.errors import InvalidRequest
from ponder.spl_store import copies
from ponder.spl_store import models as m
from ponder.spl_store.db import read_session, write_session
from ponder.spl_store.records import Policy, ResponseRecord, ResponseStatus

RESPONSE_STATUSES: tuple[str, ...] = get_args(ResponseStatus)
MAX_ID = 128
MAX_MODEL = 256


def check_response_status(status: str) -> None:
    if status not in RESPONSE_STATUSES:
        raise InvalidRequest(
            f"a response's status must be one of {', '.join(RESPONSE_STATUSES)}", param="status"
        )


class ResponseMethods:
    """Responses API responses, per tenant. A response id is looked up only among its tenant's
    responses: another tenant's id reads as missing."""

    @property
    def engine(self) -> Engine:
        """The store's engine (`Store.engine`)."""
        raise NotImplementedError

    policy: Policy
    """The store's policy (`Store.policy`): how long responses are kept."""

    def save_response(self, record: ResponseRecord) -> None:
        """Insert a response, or replace the tenant's stored one with the same id (keeping its
        `created_at`), e.g. when a response in progress completes. A new one also drops the
        tenant's responses past `policy.responses_max_age`, in the same transaction."""
        check_response_status(record.status)
        if not 0 < len(record.id) <= MAX_ID:
            raise InvalidRequest(f"a response id has 1 to {MAX_ID} characters", param="id")
        if len(record.model) > MAX_MODEL:
            raise InvalidRequest(f"a model name has at most {MAX_MODEL} characters", param="model")
        if record.previous_id is not None and len(record.previous_id) > MAX_ID:
            raise InvalidRequest(
                f"a response id has 1 to {MAX_ID} characters", param="previous_response_id"
            )
        body = dict(record.body)
        conversation = [dict(item) for item in record.conversation]
        with write_session(self.engine, record.tenant) as s:
            row = s.get(m.StoredResponse, (record.tenant, record.id))
            if row is None:
                s.add(
                    m.StoredResponse(
                        tenant=record.tenant,
                        id=record.id,
                        model=record.model,
                        status=record.status,
                        previous_id=record.previous_id,
                        body=body,
                        conversation=conversation,
                        created_at=copies.utc(record.created_at),
                    )
                )
                s.execute(
                    delete(m.StoredResponse).where(
                        m.StoredResponse.tenant == record.tenant,
                        m.StoredResponse.created_at < m.utcnow() - self.policy.responses_max_age,
                    )
                )
                return
            row.model = record.model
            row.status = record.status
            row.previous_id = record.previous_id
            row.body = body
            row.conversation = conversation

    def get_response(self, tenant: str, response_id: str) -> ResponseRecord | None:
        with read_session(self.engine) as s:
            row = s.get(m.StoredResponse, (tenant, response_id))
            return copies.to_response(row) if row is not None else None

    def delete_response(self, tenant: str, response_id: str) -> bool:
        """Whether the tenant had the response."""
        with write_session(self.engine, tenant) as s:
            done = s.execute(
                delete(m.StoredResponse).where(
                    m.StoredResponse.tenant == tenant, m.StoredResponse.id == response_id
                )
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def set_response_status(
        self, tenant: str, response_id: str, status: ResponseStatus, body: dict[str, Any]
    ) -> ResponseRecord | None:
        """Change a stored response's status and body; None when the tenant has no such
        response."""
        check_response_status(status)
        with write_session(self.engine, tenant) as s:
            row = s.get(m.StoredResponse, (tenant, response_id))
            if row is None:
                return None
            row.status = status
            row.body = dict(body)
            s.flush()
            return copies.to_response(row)

    def prune_responses(self, tenant: str, max_age: dt.timedelta) -> int:
        """Drop the tenant's responses created more than `max_age` ago; returns how many."""
        with write_session(self.engine, tenant) as s:
            done = s.execute(
                delete(m.StoredResponse).where(
                    m.StoredResponse.tenant == tenant,
                    m.StoredResponse.created_at < m.utcnow() - max_age,
                )
            )
            return int(done.rowcount)  # type: ignore[attr-defined]
