"""Which fault a request gets: the kinds, and the policies that choose them."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

FaultKind = Literal[
    "500", "429", "503", "reset", "truncate", "stall", "slow", "garbage", "echo_key"
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
# The plain error faults: status, message, type, code, extra headers.
ERRORS: dict[str, tuple[int, str, str, str | None, dict[str, str]]] = {
    "500": (500, "The server had an error processing your request.", "server_error", None, {}),
    "429": (429, "Rate limit reached.", "requests", "rate_limit_exceeded", {"Retry-After": "0"}),
    "503": (503, "The engine is currently overloaded.", "server_error", "overloaded", {}),
}


@dataclass(frozen=True)
class Fault:
    """How one request goes wrong.

    500/429/503: a JSON error with that status (429 with `Retry-After: 0`). reset: the
    connection is reset (RST) before any response. truncate: a stream sends `chunks` events
    and closes without finishing; a plain answer promises more bytes than it sends. stall: no
    response at all, until the client goes. slow: a stream with `interval_s` between events.
    garbage: a 200 with malformed JSON (a malformed event after `chunks` events in a stream).
    echo_key: an error with HTTP `status` whose message quotes the presented API key, as real
    providers do.
    """

    kind: FaultKind
    status: int = 401
    interval_s: float = 0.05
    chunks: int = 2


Policy = Callable[[dict[str, Any], int], Fault | None]
_MARKER = re.compile(r"\[fault:([a-z0-9_]+)(?::([0-9.]+))?\]")


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the request's last user message ("" without one)."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def marker_policy(body: dict[str, Any], number: int) -> Fault | None:
    """The fault a "[fault:KIND]" marker in the last user message names. An argument sets
    the status of echo_key ("[fault:echo_key:500]") or the interval of slow ("[fault:slow:0.1]")."""
    found = _MARKER.search(last_user_text(body))
    if found is None or found.group(1) not in FAULT_KINDS:
        return None
    kind: FaultKind = found.group(1)  # type: ignore[assignment]
    arg = found.group(2)
    if arg and kind == "echo_key":
        return Fault(kind, status=int(float(arg)))
    if arg and kind == "slow":
        return Fault(kind, interval_s=float(arg))
    return Fault(kind)


def random_policy(rate: float, kinds: Sequence[FaultKind], seed: int = 0) -> Policy:
    """Each request fails with probability `rate`, with a kind drawn uniformly from `kinds`;
    the same seed gives the same faults to the same request numbers."""

    def policy(body: dict[str, Any], number: int) -> Fault | None:
        rng = random.Random(seed * 1_000_003 + number)
        return Fault(rng.choice(kinds)) if rng.random() < rate else None

    return policy
