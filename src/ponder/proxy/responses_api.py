"""The OpenAI Responses API front end: `POST /v1/responses` and the stored responses.

A response runs like a chat completion (`ChatService`) and is answered as a Response object,
or as the Responses API's events. The strategy's working comes first as a `reasoning` item,
whatever `reasoning.summary` asks (`ponder: {"reasoning": false}` leaves it out).

With `store` (the default) the finished response is kept for its tenant with its whole
conversation, so that `GET /v1/responses/{id}` returns it and `previous_response_id`
continues it. If storing fails, the answer still goes out, with `store: false` in it, and a
warning is logged: the work is not thrown away, and the client can see that the response
cannot be continued. A failed or cancelled request that was not a background one is not
stored.

`background: true` answers at once with the stored response `queued`; the run goes on as a
task of this process (`AppState.background`), stores its result (or `failed`), and can be
cancelled (`POST /v1/responses/{id}/cancel`) until it ends. The app cancels the ones still
running when it shuts down; they are stored as `cancelled`.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from alembic.util.exc import CommandError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ponder.errors import InternalError, InvalidRequest, NotFound, PonderError, StoreUnavailable
from ponder.fastjson import FastJSONResponse
from ponder.keys import Principal
from ponder.logs import request_id_var
from ponder.protocol_responses import DeletedResponse, ResponseObject, ResponseRequest
from ponder.proxy.convert_responses import (
    ItemIds,
    chat_request,
    check_continuable,
    encode_message,
    finished_status,
    input_messages,
    output_items,
    output_messages,
    previous_messages,
    response_body,
    response_id,
    trace_body,
    usage_body,
)
from ponder.proxy.job import ChatRequest, Job
from ponder.proxy.responses_stream import ResponsesEvents
from ponder.proxy.routes import error_responses, require_key, state_of
from ponder.proxy.state import AppState
from ponder.spl_store import ResponseRecord, Store
from ponder.spl_store.records import ResponseStatus
from ponder.types import Completion, Message

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

IN_FLIGHT = ("queued", "in_progress")


class SharedPathRoute(APIRoute):
    """A route whose 405 names every method of its path in `Allow` (FastAPI names only those
    of the first route on the path): GET and DELETE share `/v1/responses/{response_id}`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in (self.methods or ()):
            allowed = {
                method
                for route in responses.routes
                if isinstance(route, APIRoute) and route.path == self.path
                for method in route.methods or ()
            }
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        await super().handle(scope, receive, send)


responses = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 403, 404, 429, 502, 503, 504),
    route_class=SharedPathRoute,
)


async def in_store(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a store method off the event loop; a database that fails is a 503."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (SQLAlchemyError, OSError, CommandError) as exc:
        raise StoreUnavailable(f"the database failed ({type(exc).__name__})") from exc


@dataclass
class ResponsesFront:
    """How one Responses request is answered (a `FrontEnd`), and stored."""

    request: ResponseRequest
    request_id: str
    tenant: str
    store: Store
    conversation: Sequence[Message]
    """The turns before the answer, without the instructions: what is stored with it."""
    created_at: int

    @property
    def id(self) -> str:
        return response_id(self.request_id)

    def snapshot(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The Response object as it stands."""
        return response_body(
            self.request,
            self.request_id,
            self.created_at,
            status=status,
            output=output,
            error=error,
        )

    def record(
        self, status: ResponseStatus, body: dict[str, Any], output: Sequence[dict[str, Any]] = ()
    ) -> ResponseRecord:
        messages = [*self.conversation, *output_messages(output)]
        return ResponseRecord(
            id=self.id,
            tenant=self.tenant,
            model=self.request.model,
            status=status,
            previous_id=self.request.previous_response_id,
            body=body,
            conversation=[encode_message(m) for m in messages],
            created_at=dt.datetime.fromtimestamp(self.created_at, dt.UTC),
        )

    async def finished(
        self, job: Job, choices: Sequence[Completion], output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The finished Response object, stored when asked (`store: false` in it if that
        failed)."""
        meter = job.ctx.meter
        status = finished_status(choices)
        body = response_body(
            self.request,
            self.request_id,
            self.created_at,
            status=status,
            output=output,
            usage=usage_body(meter.usage, meter.reasoning_tokens(choices)),
            completed_at=int(time.time()),
        )
        if job.ctx.options.get("trace"):
            body["ponder"] = {"trace": trace_body(job.ctx.trace)}
        if body["store"]:
            record = self.record(
                "incomplete" if status == "incomplete" else "completed", body, output
            )
            try:
                await in_store(self.store.save_response, record)
            except PonderError as exc:
                log.warning("response %s answered but not stored: %s", self.id, exc.message)
                body = {**body, "store": False}
        return body

    async def respond(self, job: Job, choices: list[Completion]) -> Response:
        output = output_items(ItemIds(self.request_id), choices, job.ctx.working)
        return FastJSONResponse(await self.finished(job, choices, output))

    def stream_format(self, job: Job) -> ResponsesEvents:
        async def complete(
            choices: Sequence[Completion], output: list[dict[str, Any]]
        ) -> dict[str, Any]:
            return await self.finished(job, choices, output)

        meter = job.ctx.meter
        return ResponsesEvents(
            ItemIds(self.request_id), self.snapshot, complete, calls=lambda: meter.calls
        )


async def _previous(store: Store, tenant: str, previous_id: str | None) -> list[Message]:
    """The stored conversation that `previous_response_id` continues (404 when the tenant has
    no such response)."""
    if previous_id is None:
        return []
    record = await in_store(store.get_response, tenant, previous_id)
    if record is None:
        raise NotFound(
            f"No response with id '{previous_id}' is stored.", param="previous_response_id"
        )
    check_continuable(record.status, previous_id)
    try:
        return previous_messages(record.conversation)
    except ValueError as exc:
        log.error("stored response %s has a broken conversation: %s", previous_id, exc)
        raise InternalError() from exc


@responses.post(
    "/responses",
    response_model=ResponseObject,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_response(body: ResponseRequest, request: Request) -> Response:
    state = state_of(request)
    principal: Principal = request.state.principal
    request_id: str = request.state.request_id
    previous = await _previous(state.store, principal.tenant, body.previous_response_id)
    front = ResponsesFront(
        body,
        request_id,
        principal.tenant,
        state.store,
        [*previous, *input_messages(body)],
        int(time.time()),
    )
    chat = chat_request(body, previous)
    if body.background:
        return await _start_background(state, chat, front, principal)
    return await state.chat.handle(chat, request_id, request.receive, front, principal)


@responses.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request) -> Response:
    state = state_of(request)
    record = await in_store(state.store.get_response, _tenant(request), response_id)
    if record is None:
        raise _missing(response_id)
    return JSONResponse(record.body)


@responses.delete("/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: str, request: Request) -> Response:
    """Delete a stored response (a background one still running is cancelled first)."""
    state = state_of(request)
    tenant = _tenant(request)
    await _stop(state, tenant, response_id)
    if not await in_store(state.store.delete_response, tenant, response_id):
        raise _missing(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@responses.post("/responses/{response_id}/cancel", response_model=ResponseObject)
async def cancel_response(response_id: str, request: Request) -> Response:
    """Cancel a background response that is running; a finished one is returned as it is."""
    state = state_of(request)
    tenant = _tenant(request)
    record = await in_store(state.store.get_response, tenant, response_id)
    if record is None:
        raise _missing(response_id)
    if not record.body.get("background"):
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    await _stop(state, tenant, response_id)
    record = await _settle_cancelled(state.store, tenant, response_id)
    if record is None:  # deleted meanwhile
        raise _missing(response_id)
    return JSONResponse(record.body)


def _tenant(request: Request) -> str:
    principal: Principal = request.state.principal
    return principal.tenant


def _missing(response_id: str) -> NotFound:
    return NotFound(f"No response with id '{response_id}' is stored.", param="response_id")


# ---- background responses --------------------------------------------------------------


async def _start_background(
    state: AppState, chat: ChatRequest, front: ResponsesFront, principal: Principal
) -> Response:
    """Check the request, store it `queued`, start its run, and answer with it."""
    state.chat.prepare(chat, front.request_id, principal)  # refuses a bad request now
    key = (front.tenant, front.id)
    await _stop(state, *key)  # a run of the same id (the client's own x-request-id) ends
    queued = front.snapshot("queued", [])
    await in_store(front.store.save_response, front.record("queued", queued))
    # A context of its own: the run is no part of this HTTP request (its metrics and logs).
    run = _run(state, chat, front, principal)
    task = asyncio.create_task(run, context=contextvars.Context())
    state.background[key] = task
    task.add_done_callback(lambda t: _forget(state.background, key, t))
    return JSONResponse(queued)


def _forget(
    running: MutableMapping[tuple[str, str], asyncio.Task[None]],
    key: tuple[str, str],
    task: asyncio.Task[None],
) -> None:
    if running.get(key) is task:
        del running[key]


async def _never_disconnects() -> MutableMapping[str, Any]:
    """The `receive` of a run that has no client connection: it never says anything."""
    await asyncio.Future()
    raise AssertionError("unreachable")


async def _run(
    state: AppState, chat: ChatRequest, front: ResponsesFront, principal: Principal
) -> None:
    """A background response's run: its result stored by `front`, a failure as `failed`.
    Cancelling it is the canceller's to store (`_settle_cancelled`)."""
    request_id_var.set(front.request_id)
    store, tenant = front.store, front.tenant
    try:
        started = front.snapshot("in_progress", [])
        await in_store(store.set_response_status, tenant, front.id, "in_progress", started)
        await state.chat.handle(chat, front.request_id, _never_disconnects, front, principal)
    except PonderError as exc:
        await _fail(front, exc)
    except Exception as exc:
        log.error("background response %s failed", front.id, exc_info=exc)
        await _fail(front, InternalError())


async def _fail(front: ResponsesFront, error: PonderError) -> None:
    detail = {"code": error.code or error.type, "message": error.message}
    body = front.snapshot("failed", [], error=detail)
    try:
        await in_store(front.store.set_response_status, front.tenant, front.id, "failed", body)
    except PonderError as exc:
        log.error("background response %s failed and could not be stored: %s", front.id, exc)


async def _stop(state: AppState, tenant: str, rid: str) -> None:
    """Cancel the background run of this response if one is in flight here, and wait until
    it has unwound (its backend calls closed)."""
    task = state.background.get((tenant, rid))
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait((task,))


async def _settle_cancelled(store: Store, tenant: str, rid: str) -> ResponseRecord | None:
    """Store a response that was left in flight as `cancelled`; the record as it stands."""
    record = await in_store(store.get_response, tenant, rid)
    if record is None or record.status not in IN_FLIGHT:
        return record
    body = {**record.body, "status": "cancelled"}
    return await in_store(store.set_response_status, tenant, rid, "cancelled", body)


async def cancel_background(state: AppState) -> None:
    """At shutdown: cancel every background response in flight and store it `cancelled`."""
    running = list(state.background.items())
    for _, task in running:
        task.cancel()
    if running:
        await asyncio.wait([task for _, task in running])
    for (tenant, rid), _ in running:
        try:
            await _settle_cancelled(state.store, tenant, rid)
        except PonderError as exc:
            log.error("background response %s was cancelled but not stored: %s", rid, exc)
