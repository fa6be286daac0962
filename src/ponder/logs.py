"""Logging: one line per record, as JSON (`PONDER_LOG_FORMAT=json`) or text, with the request
id of the request being served, and every configured secret masked.

The request id travels in a context variable that `RequestIdMiddleware` sets, so every record
logged while a request is served, in any module and in the tasks it starts, carries it. The
secrets (API keys, the upstream key) are masked by a filter on the handler, whatever the
logger: a key can never reach a log line, even by way of an exception message or a URL.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable
from typing import TextIO

from ponder.config import Settings, split_key

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ponder_request_id", default=None
)
MASK = "***"
MIN_SECRET = 4
"""Shorter strings are not masked: they would mask ordinary words too."""


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RedactFilter(logging.Filter):
    """Masks every secret in the record's message and exception text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self.mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        record.exc_info = None  # the masked text is what gets printed
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(levelname)s %(name)s [%(request_id)s]: %(message)s"


def secrets_of(settings: Settings) -> list[str]:
    """The strings that must never be logged: the API keys and the upstream key."""
    found = []
    for entry in settings.api_keys:
        value = entry.get_secret_value()
        found += [value, split_key(value)[1]]
    if settings.upstream_api_key is not None:
        found.append(settings.upstream_api_key.get_secret_value())
    return found


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted (it may be replaced after
    logging was configured, as test runners do)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def handler_for(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `settings.log_format` lines, with the request id and secrets masked."""
    handler: logging.Handler = _Stderr() if stream is None else logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactFilter(secrets_of(settings)))
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record (uvicorn's included) through one Ponder handler at
    `settings.log_level`, replacing the one an earlier call installed (other handlers stay)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "ponder", False)]:
        root.removeHandler(old)
    handler = handler_for(settings, stream)
    handler.ponder = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler
