"""`ponder log show REQUEST_ID`: one request of the conversation log, as a readable tree."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ponder.config import Settings
from ponder.errors import InvalidRequest, NotFound

PREVIEW = 200
"""Characters of a message or answer shown per line."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("log", help="read the conversation log (PONDER_CONVERSATION_LOG)")
    verbs = p.add_subparsers(dest="log_command", required=True)
    show = verbs.add_parser("show", help="one request as a tree of its backend calls")
    show.add_argument("request_id")
    show.add_argument("--dir", type=Path, help="the log's directory (default: the setting)")
    show.add_argument("--json", action="store_true", help="the request's line as it is")


def run(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    directory = args.dir or settings.conversation_log
    if directory is None:
        raise InvalidRequest("no log: give --dir or set PONDER_CONVERSATION_LOG", param="--dir")
    line = find(Path(directory), args.request_id)
    if args.json:
        out.write(json.dumps(line, ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(tree(line))
    return 0


def find(directory: Path, request_id: str) -> dict[str, Any]:
    """The newest line of `request_id` in the log's files (newest file first)."""
    for path in sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True):
        entries: list[dict[str, Any]] = list(_lines(path))
        for entry in reversed(entries):
            if entry.get("request_id") == request_id:
                return dict(entry)
    raise NotFound(f"no request {request_id!r} in the log at {directory}")


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for raw in f:
            try:
                line: object = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(line, dict):
                yield {str(k): v for k, v in line.items()}


def tree(line: dict[str, Any]) -> str:
    route = line.get("route") or {}
    names = [*(route.get("plugins") or []), *(route.get("strategies") or [])]
    usage = line.get("usage") or {}
    calls = line.get("calls") or []
    out = [
        f"request {line.get('request_id')}  {line.get('model')}  (route {'&'.join(names)}, "
        f"tenant {line.get('tenant')}, {line.get('at')})",
        f"  {len(calls)} backend call{'s' if len(calls) != 1 else ''}, "
        f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} output "
        f"tokens ({usage.get('cached_tokens', 0)} cached), {line.get('seconds', 0):.2f} s",
    ]
    for number, call in enumerate(calls, start=1):
        last = number == len(calls) and "answer" not in line and "error" not in line
        branch, rest = ("└─", "   ") if last else ("├─", "│  ")
        cu = call.get("usage") or {}
        kind = "streamed" if call.get("streamed") else "call"
        out.append(
            f"{branch} {kind} {number} at {call.get('started_s', 0):.2f} s, "
            f"{call.get('seconds', 0):.2f} s, {cu.get('prompt_tokens', 0)} + "
            f"{cu.get('completion_tokens', 0)} tokens"
        )
        for message in call.get("messages") or []:
            out.append(f"{rest} {message.get('role')}: {_preview(message.get('content'))}")
        for i, choice in enumerate(call.get("choices") or []):
            label = "→" if len(call.get("choices") or []) == 1 else f"→ [{i}]"
            out.append(f"{rest} {label} {_preview(choice.get('content'))}")
        if call.get("error"):
            out.append(f"{rest} ✗ {call['error']}")
    if "error" in line:
        out.append(f"└─ error: {line['error']}")
    elif "answer" in line:
        answer = line["answer"]
        if isinstance(answer, str):
            out.append(f"└─ answer {answer}")
        else:
            for choice in answer:
                out.append(f"└─ answer: {_preview(choice.get('content'))}")
    return "\n".join(out) + "\n"


def _preview(text: object) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"
