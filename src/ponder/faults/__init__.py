"""A fake OpenAI-compatible upstream that fails on purpose, for fault-injection tests and the
load benchmark.

`FaultyUpstream` is a raw asyncio HTTP/1.1 server, not an ASGI app: only raw sockets can reset
a connection, lie about a Content-Length or hold a request without ever answering, as real
upstreams do on a bad day. It serves `GET /v1/models` and `POST /v1/chat/completions` (plain
and streamed, `n`, `stream_options.include_usage`), answering every choice with "echo: " + the
last user message, so each client can check it got its own answer. A policy
`(body, request_number) -> Fault | None` picks each chat request's fault (`marker_policy`:
"[fault:reset]" in the message; `random_policy`: seeded, at a rate). Every chat request is
recorded: body, fault, when it started and ended, and when its client closed the connection.
"""

from ponder.faults.policy import (
    ERRORS,
    FAULT_KINDS,
    Fault,
    FaultKind,
    Policy,
    last_user_text,
    marker_policy,
    random_policy,
)
from ponder.faults.upstream import FaultyUpstream
from ponder.faults.wire import UpstreamRecord

__all__ = [
    "ERRORS",
    "FAULT_KINDS",
    "Fault",
    "FaultKind",
    "FaultyUpstream",
    "Policy",
    "UpstreamRecord",
    "last_user_text",
    "marker_policy",
    "random_policy",
]
