"""The conversation log (opt-in, `PONDER_CONVERSATION_LOG=DIR`): one JSON line per request in
`DIR/YYYY-MM-DD.jsonl` (UTC), with its route, every backend call (the messages the backend was
sent, what it answered, its tokens and timing), the request's usage and time, and the answer.

A day's file past `max_bytes` is rotated to `YYYY-MM-DD.N.jsonl` and a new one begun; files of
days older than `keep_days` are removed when a new day's file starts. `ponder log show ID`
prints one request from it.

What the log must never hold is kept out of it: every configured key (and anything shaped like
an API key) is masked, and for a route with the `privacy` plugin the answer, which carries the
restored originals, is withheld: the calls hold only what the backend saw, which was masked.
A failed request is logged too, with its error.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ponder.fastjson import dumps
from ponder.strategies.context import CallRecord, RequestContext
from ponder.strategies.resolve import Route
from ponder.types import Completion, Message, Usage

log = logging.getLogger(__name__)

MASK = "***"
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key)-[A-Za-z0-9_\-]{16,}\b")
"""Strings shaped like an API key, masked even when no setting names them."""
_KEY_LIKE_CANDIDATE = re.compile(r"(?:sk|pk|rk|key)-[A-Za-z0-9_\-]{16}")
"""What every `_KEY_LIKE` match contains, found five times faster on long text, which mostly
holds none (the leading `\b` keeps the regex engine from skipping ahead to a first letter);
before it, `mask` looks for the two characters every match has (`k-` or `y-`), faster still."""
WITHHELD = "(withheld: the privacy plugin restored the originals in it)"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}(\.\d+)?\.jsonl$")


class ConversationLog:
    def __init__(
        self,
        directory: Path,
        secrets: Iterable[str] = (),
        *,
        max_bytes: int = 64 * 1024 * 1024,
        keep_days: float = 30.0,
    ) -> None:
        self.directory = directory
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.max_bytes = max_bytes
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._day: str | None = None

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        if ("k-" in text or "y-" in text) and _KEY_LIKE_CANDIDATE.search(text):
            return _KEY_LIKE.sub(MASK, text)
        return text

    def write(self, entry: dict[str, Any]) -> None:
        """Append one request's line; a failure to write is logged, never the request's."""
        line = self.mask(dumps(entry).decode()) + "\n"
        now = dt.datetime.now(dt.UTC)
        day = now.strftime("%Y-%m-%d")
        data = line.encode("utf-8")
        try:
            with self._lock:
                self.directory.mkdir(parents=True, exist_ok=True)
                if day != self._day:
                    self._day = day
                    self._remove_old(now)
                path = self.directory / f"{day}.jsonl"
                if path.exists() and path.stat().st_size + len(data) > self.max_bytes:
                    path.rename(self._rotated(day))
                with path.open("ab") as f:
                    f.write(data)
        except OSError as exc:
            log.warning("the conversation log could not be written: %s", exc)

    def _rotated(self, day: str) -> Path:
        n = 1
        while (self.directory / f"{day}.{n}.jsonl").exists():
            n += 1
        return self.directory / f"{day}.{n}.jsonl"

    def _remove_old(self, now: dt.datetime) -> None:
        oldest = (now - dt.timedelta(days=self.keep_days)).strftime("%Y-%m-%d")
        for path in self.directory.glob("*.jsonl"):
            if _DAY.match(path.name) and path.name[:10] < oldest:
                path.unlink(missing_ok=True)


def entry(
    *,
    model: str,
    route: Route,
    ctx: RequestContext,
    seconds: float,
    answer: Sequence[Completion] | None,
    error: BaseException | None,
) -> dict[str, Any]:
    """One request's line."""
    withheld = "privacy" in route.plugins
    out: dict[str, Any] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "request_id": ctx.request_id,
        "tenant": ctx.tenant,
        "model": model,
        "route": {"plugins": list(route.plugins), "strategies": list(route.slugs)},
        "backend_model": route.model,
        "calls": [_call(c) for c in ctx.calls or ()],
        "usage": _usage(ctx.meter.usage),
        "seconds": round(seconds, 6),
    }
    if answer is not None:
        out["answer"] = WITHHELD if withheld else [_choice(c) for c in answer]
    if error is not None:
        code = getattr(error, "code", None) or type(error).__name__
        out["error"] = f"{code}: {getattr(error, 'message', str(error))}"
    return out


def _call(call: CallRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messages": [_message(m) for m in call.messages],
        "choices": [_choice(c) for c in call.choices],
        "usage": _usage(call.usage),
        "started_s": call.started_s,
        "seconds": call.seconds,
        "streamed": call.streamed,
    }
    if call.error is not None:
        out["error"] = call.error
    return out


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.text}
    if m.has_non_text_parts and isinstance(m.content, tuple):
        out["parts"] = [str(p.get("type")) for p in m.content]
    if m.tool_calls:
        out["tool_calls"] = [{"name": t.name, "arguments": t.arguments} for t in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _choice(c: Completion) -> dict[str, Any]:
    out: dict[str, Any] = {"content": c.content, "finish_reason": c.finish_reason}
    if c.tool_calls:
        out["tool_calls"] = [{"name": t.name, "arguments": t.arguments} for t in c.tool_calls]
    return out


def _usage(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens,
    }
