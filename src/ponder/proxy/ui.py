"""`/ui/spl`: a read-only page of a tenant's learned strategies, for a person to look at;
`/ui/playground`: one question asked of several routes side by side (`playground.py`).

The strategies page is rendered on the server, every value escaped with `html.escape`, no
scripts and no external assets (a strict Content-Security-Policy says so). With API keys
configured both pages need one, as `Authorization: Bearer KEY` or as the password of HTTP Basic
auth (a browser asks for it); the key decides the tenant, as on the API.
Without keys they show tenant "default".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from collections.abc import Sequence
from itertools import groupby

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from ponder.proxy import playground
from ponder.proxy.knowledge import filters
from ponder.proxy.routes import presented_secret, principal_for, state_of
from ponder.spl_store import PROBLEM_TYPES, EventRecord, StrategyRecord
from ponder.spl_store.portable import iso, rate_label
from ponder.spl_store.rows import STATUSES

HISTORY = 50
"""Events shown per strategy, newest first."""

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
CHALLENGE = {"WWW-Authenticate": 'Basic realm="ponder"'}

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1d1d1f; background: #fafafa; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; }
.type-description { color: #666; margin-top: -.5rem; }
.strategy { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem .9rem;
            margin: .8rem 0; }
.meta span { margin-right: 1rem; font-size: 13px; }
.status { font-weight: 600; text-transform: uppercase; }
.status-active .status { color: #137333; } .status-candidate .status { color: #9a6700; }
.status-retired { opacity: .65; } .status-retired .status { color: #666; }
.text { white-space: pre-wrap; font: 14px/1.4 ui-monospace, monospace; background: #f4f4f4;
        padding: .5rem; border-radius: 4px; }
.history ol { font-size: 13px; padding-left: 1.2rem; } .kind { font-weight: 600; }
nav a { margin-right: .6rem; } nav a.current { font-weight: 700; text-decoration: none; }
"""


ui = APIRouter(prefix="/ui", include_in_schema=False)


@ui.get("/spl", response_class=HTMLResponse)
async def spl_page(request: Request, status: str | None = None) -> HTMLResponse:
    keyring = state_of(request).keyring
    principal = principal_for(keyring, request.headers.get("authorization", ""), basic=True)
    if principal is None:
        body = page("Ponder: sign in", "<h1>401</h1><p>This page needs an API key.</p>")
        return HTMLResponse(body, status_code=401, headers={**HEADERS, **CHALLENGE})
    tenant = principal.tenant
    _, statuses = filters(None, status)
    store = state_of(request).store
    rows = await asyncio.to_thread(store.strategies, tenant, None, statuses)
    history = await asyncio.to_thread(store.history, tenant, [r.id for r in rows], HISTORY)
    content = render(tenant, rows, history, status or None)
    return HTMLResponse(page(f"Ponder strategies: {tenant}", content), headers=HEADERS)


@ui.get("/playground", response_class=HTMLResponse)
async def playground_page(
    request: Request,
    q: str = "",
    route: list[str] = Query(default=[]),  # noqa: B008
    model: str | None = None,
    ask: bool = False,
) -> HTMLResponse:
    """Ask one question of several routes side by side (see `ponder.proxy.playground`)."""
    state = state_of(request)
    authorization = request.headers.get("authorization", "")
    principal = principal_for(state.keyring, authorization, basic=True)
    if principal is None:
        body = page("Ponder: sign in", "<h1>401</h1><p>This page needs an API key.</p>")
        return HTMLResponse(body, status_code=401, headers={**HEADERS, **CHALLENGE})
    registry = state.engine.registry
    slugs = registry.slugs
    body = playground.render(
        tenant=principal.tenant,
        key="" if state.keyring.open else presented_secret(authorization, basic=True) or "",
        slugs=[s for s in slugs if not registry.is_plugin(s)],
        plugins=[s for s in slugs if registry.is_plugin(s)],
        models=await state.backend.models(),
        question=q,
        routes=route,
        model=model,
        ask=ask,
    )
    return HTMLResponse(body, headers=playground.HEADERS)


def page(title: str, content: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{content}</body></html>\n"
    )


def render(
    tenant: str,
    rows: Sequence[StrategyRecord],
    history: dict[int, list[EventRecord]],
    status: str | None,
) -> str:
    e = html.escape
    count = len(rows)
    parts = [
        "<header><h1>Learned strategies</h1>",
        f'<p id="summary">Tenant <b id="tenant">{e(tenant)}</b>: {count} '
        f"strateg{'y' if count == 1 else 'ies'}{f' ({e(status)})' if status else ''}.</p>",
        _nav(status),
        "</header>",
    ]
    if not rows:
        parts.append('<p id="empty">No strategies yet.</p>')
    for problem_type, group in groupby(rows, key=lambda r: r.problem_type):
        parts.append(
            f'<section class="problem-type" id="type-{e(problem_type)}">'
            f"<h2>{e(problem_type)}</h2>"
            f'<p class="type-description">{e(PROBLEM_TYPES.get(problem_type, ""))}</p>'
        )
        parts.extend(_strategy(r, history.get(r.id, [])) for r in group)
        parts.append("</section>")
    return "\n".join(parts)


def _nav(status: str | None) -> str:
    links = []
    for value in (None, *STATUSES):
        href = "?status=" + value if value else "?"
        current = ' class="current"' if value == status else ""
        links.append(f'<a href="{href}"{current}>{value or "all"}</a>')
    return f'<nav id="filter">Show: {"".join(links)}</nav>'


def _strategy(r: StrategyRecord, events: Sequence[EventRecord]) -> str:
    e = html.escape
    return (
        f'<article class="strategy status-{e(r.status)}" id="strategy-{r.id}">'
        '<div class="meta">'
        f'<span class="id">#{r.id}</span>'
        f'<span class="status">{e(r.status)}</span>'
        f'<span class="rate" title="successes/attempts">{e(rate_label(r))}</span>'
        f'<span class="version">version {r.version}</span>'
        f'<span class="origin">{e(r.origin)}</span>'
        f'<span class="updated">updated {_time(r.updated_at)}</span>'
        "</div>"
        f'<div class="text">{e(r.text)}</div>'
        f'<details class="history"><summary>History ({len(events)} event'
        f"{'' if len(events) == 1 else 's'})</summary><ol>"
        + "".join(_event(ev) for ev in events)
        + "</ol></details></article>"
    )


def _event(ev: EventRecord) -> str:
    e = html.escape
    detail = ", ".join(f"{k}={v}" for k, v in ev.detail.items())
    request = f' <span class="request">request {e(ev.request_id)}</span>' if ev.request_id else ""
    return (
        f'<li class="event event-{e(ev.kind)}">{_time(ev.created_at)} '
        f'<span class="kind">{e(ev.kind)}</span>{request} '
        f'<span class="detail">{e(detail)}</span></li>'
    )


def _time(moment: dt.datetime) -> str:
    stamp = iso(moment)
    return f'<time datetime="{stamp}">{stamp.replace("T", " ").removesuffix("+00:00")}</time>'
