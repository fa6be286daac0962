"""`/v1/ponder/...`: a tenant's learned strategies, and feedback on earlier answers.

Behind the same API-key check as the chat routes: the key decides the tenant, and every store
call is made for that tenant only, so one tenant can neither read nor rate another's rows.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ponder.errors import PermissionDenied
from ponder.protocol import FeedbackResult, SplStrategyList
from ponder.proxy.routes import error_responses, require_key, state_of
from ponder.spl_store import PROBLEM_TYPES, Status
from ponder.spl_store.portable import strategy_fields
from ponder.spl_store.rows import STATUSES, check_status, check_type

COMPLETION_PREFIX = "chatcmpl-"
MAX_REQUEST_ID = 128
"""As long as the `x-request-id` the server accepts and the store keeps."""

knowledge = APIRouter(
    prefix="/v1/ponder",
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 403, 404, 429, 503),
)


def filters(problem_type: str | None, status: str | None) -> tuple[str | None, list[Status] | None]:
    """The store's filters from query parameters (an empty one means none); 400 naming the
    parameter for an unknown type or status. The UI shares it."""
    problem_type, status = problem_type or None, status or None
    if problem_type is not None:
        check_type(problem_type)
    if status is None:
        return problem_type, None
    return problem_type, [check_status(status)]


# The values `filters` takes, in the schema too (empty: no filter).
ProblemTypeFilter = Annotated[
    str | None,
    Query(description="Only this problem type", json_schema_extra={"enum": ["", *PROBLEM_TYPES]}),
]
StatusFilter = Annotated[
    str | None, Query(description="Only this status", json_schema_extra={"enum": ["", *STATUSES]})
]


@knowledge.get(
    "/spl/strategies",
    response_model=None,  # the dict is returned as it is; the model documents it
    responses={200: {"model": SplStrategyList, "description": "The strategies"}},
)
async def list_strategies(
    request: Request, problem_type: ProblemTypeFilter = None, status: StatusFilter = None
) -> dict[str, Any]:
    """The tenant's strategies, by problem type then id."""
    store = state_of(request).store
    rows = await asyncio.to_thread(
        store.strategies, request.state.principal.tenant, *filters(problem_type, status)
    )
    return {
        "object": "list",
        "data": [{"object": "ponder.spl.strategy", **strategy_fields(r)} for r in rows],
    }


class Feedback(BaseModel):
    """Whether an earlier answer was correct. `request_id` is the response's `id` (with or
    without its `chatcmpl-` prefix) or its `x-request-id`."""

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_REQUEST_ID + len(COMPLETION_PREFIX),
            # What `_bare` refuses, in the schema: nothing but spaces and the prefix.
            json_schema_extra={"pattern": rf"^(?!\s*{COMPLETION_PREFIX}\s*$)[\s\S]*\S"},
        ),
    ]
    correct: StrictBool

    @field_validator("request_id")
    @classmethod
    def _bare(cls, value: str) -> str:
        value = value.strip().removeprefix(COMPLETION_PREFIX)
        if not value:
            raise ValueError("must name a request")
        return value


@knowledge.post(
    "/feedback",
    response_model=None,
    responses={200: {"model": FeedbackResult, "description": "What the feedback changed"}},
)
async def feedback(body: Feedback, request: Request) -> dict[str, Any]:
    """Apply the feedback to the SPL learning request (counters, promotion, retirement) and to
    the memory episodes with this id, in one transaction. 404 when neither is known for the
    tenant.

    `applied`, `outcome` and `source` describe the learning request when there is one (feedback
    does not override ground truth, and the same outcome twice changes nothing); otherwise the
    episodes, which always take the feedback."""
    if not request.state.principal.learning:
        raise PermissionDenied(
            "this key may not change the tenant's knowledge (its learning is off)"
        )
    store = state_of(request).store
    tenant: str = request.state.principal.tenant
    applied = await asyncio.to_thread(store.feedback, tenant, body.request_id, body.correct)
    learned, episodes = applied.learned, applied.episodes
    if learned is None:
        return {
            "request_id": body.request_id,
            "applied": True,
            "outcome": body.correct,
            "source": "feedback",
            "promoted": [],
            "retired": [],
            "episodes": episodes,
        }
    return {
        "request_id": body.request_id,
        "applied": learned.applied,
        "outcome": learned.outcome,
        "source": learned.source,
        "promoted": list(learned.promoted),
        "retired": list(learned.retired),
        "episodes": episodes,
    }
