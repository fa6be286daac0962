"""`ponder spl ...` and `ponder memory ...`: look at and manage the SPL and memory store.

Every command works on one tenant (`--tenant`, default "default") of the database that
`--database-url` names (default: `PONDER_DATABASE_URL`, else ponder.db in the user's data
directory). Errors are `PonderError`s; `ponder.cli.main` prints them and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ponder.config import DEFAULT_TENANT, Settings
from ponder.errors import InvalidRequest, PonderError
from ponder.spl_store import (
    PROBLEM_TYPES,
    Baseline,
    EventRecord,
    Status,
    Store,
    StrategyRecord,
    TenantSettings,
    portable,
)
from ponder.spl_store.decisions import compare
from ponder.spl_store.rows import STATUSES

STATUS_ORDER = {"active": 0, "candidate": 1, "retired": 2}
PREVIEW = 60
DECISIONS: dict[str, tuple[Status, str]] = {
    "approve": ("active", "approved"),
    "retire": ("retired", "retired"),
}
"""An operator's decision: the status it sets and the event it records."""


def add_parsers(sub: Any) -> None:
    """Register `spl` and `memory` on the root parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tenant", default=DEFAULT_TENANT, help="default: %(default)s")
    common.add_argument(
        "--database-url", help="default: PONDER_DATABASE_URL, else ponder.db in the data dir"
    )

    spl = sub.add_parser("spl", help="system prompt learning: strategies and learning settings")
    spl_sub = spl.add_subparsers(dest="spl_command", required=True)

    ls = spl_sub.add_parser("list", parents=[common], help="list the tenant's strategies")
    ls.add_argument("--type", dest="problem_type", choices=list(PROBLEM_TYPES))
    ls.add_argument("--status", choices=list(STATUSES))
    ls.add_argument("--json", action="store_true", help="print JSON")

    show = spl_sub.add_parser("show", parents=[common], help="one strategy and its history")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="print JSON")

    export = spl_sub.add_parser("export", parents=[common], help="write strategies to a file")
    export.add_argument("file", help="*.yaml, *.yml or *.json; '-' for YAML on stdout")

    imp = spl_sub.add_parser("import", parents=[common], help="apply an (edited) export file")
    imp.add_argument("file", help="*.yaml, *.yml or *.json; '-' for YAML on stdin")

    for name, text in (("approve", "candidate -> active"), ("retire", "-> retired")):
        p = spl_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("id", type=int)

    learn = spl_sub.add_parser(
        "learn", parents=[common], help="turn learning on/off; without on/off, list tenants"
    )
    learn.add_argument("state", nargs="?", choices=["on", "off"])
    learn.add_argument(
        "--review",
        action=argparse.BooleanOptionalAction,
        help="hold learned candidates for `ponder spl approve` instead of promoting them",
    )

    memory = sub.add_parser("memory", help="episodic memory of the mem- strategy")
    mem_sub = memory.add_subparsers(dest="memory_command", required=True)
    mls = mem_sub.add_parser("list", parents=[common], help="remembered exchanges, newest first")
    mls.add_argument("--conversation")
    mls.add_argument("--limit", type=int, default=50, help="default: %(default)s")
    mls.add_argument("--json", action="store_true", help="print JSON")
    clear = mem_sub.add_parser("clear", parents=[common], help="forget remembered exchanges")
    clear.add_argument("--conversation", help="only this conversation (default: all)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl ..." is noise here
    if args.database_url:
        settings = settings.model_copy(update={"database_url": args.database_url})
    store = Store.for_settings(settings)
    try:
        if args.command == "memory":
            return _memory(store, args)
        return _spl(store, args)
    except SQLAlchemyError as exc:
        # e.g. an unreachable server or a malformed URL; the URL itself may hold a password
        reason = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip().splitlines()
        message = reason[0] if reason else type(exc).__name__
        raise PonderError(f"the database failed: {message}") from None
    finally:
        store.close()


# ---- spl --------------------------------------------------------------------------------------


def _spl(store: Store, args: argparse.Namespace) -> int:
    tenant: str = args.tenant
    command: str = args.spl_command
    if command == "list":
        statuses = [args.status] if args.status else None
        rows = sorted(
            store.strategies(tenant, args.problem_type, statuses),
            key=lambda r: (r.problem_type, STATUS_ORDER[r.status], r.id),
        )
        if args.json:
            _json([portable.strategy_fields(r) for r in rows])
        else:
            _print_table(rows)
    elif command == "show":
        record = store.strategy(tenant, args.id)
        events = store.events(tenant, args.id)
        baseline = store.baselines(tenant).get(record.problem_type)
        rules = store.lifecycle
        comparison = compare(record.successes, record.attempts, baseline, rules)
        against = portable.comparison_fields(baseline, comparison, rules.confidence)
        if args.json:
            fields = portable.strategy_fields(record)
            events_json = [portable.event_fields(e) for e in events]
            _json({**fields, "against_baseline": against, "events": events_json})
        else:
            _print_strategy(record, events, baseline, against)
    elif command == "export":
        _export(store, tenant, args.file)
    elif command == "import":
        _import(store, tenant, args.file)
    elif command in ("approve", "retire"):
        _decide(store, tenant, args.id, command)
    else:
        _learn(store, tenant, args.state, args.review)
    return 0


def _print_table(rows: Sequence[StrategyRecord]) -> None:
    if not rows:
        print("no strategies")
        return
    table = [("ID", "TYPE", "STATUS", "SUCCESS", "VERSION", "TEXT")]
    table += [
        (
            str(r.id),
            r.problem_type,
            r.status,
            portable.rate_label(r),
            str(r.version),
            _first_line(r.text),
        )
        for r in rows
    ]
    _table(table)


def _print_strategy(
    record: StrategyRecord,
    events: Sequence[EventRecord],
    baseline: Baseline | None,
    against: dict[str, Any],
) -> None:
    for name, value in portable.strategy_fields(record).items():
        if name == "text":
            continue
        if name == "success_rate":
            value = portable.rate_label(record)
        print(f"{name + ':':14}{value}")
    shown = "none yet" if baseline is None else portable.rate_label(baseline)
    print(f"{'baseline:':14}{shown} with no strategies (the control arm of its type)")
    print(f"{'vs baseline:':14}{_against_label(against)}")
    print("text:")
    for line in record.text.splitlines():
        print(f"  {line}")
    plural = "" if len(events) == 1 else "s"
    print(f"history ({len(events)} event{plural}, newest first, UTC):")
    for event in events:
        detail = ", ".join(f"{k}={v}" for k, v in event.detail.items())
        request = f" request {event.request_id}" if event.request_id else ""
        print(f"  {event.created_at:%Y-%m-%d %H:%M:%S}  {event.kind}{request}  {detail}".rstrip())


def _against_label(against: dict[str, Any]) -> str:
    """ "+12.0 points, 80% interval [-8.1, +31.0]: unclear", or why there is no comparison."""
    if against["interval"] is None:
        return f"{against['verdict']} (too few control outcomes or attempts to compare)"
    low, high = against["interval"]
    return (
        f"{against['lift'] * 100:+.1f} points, {against['confidence']:.0%} interval "
        f"[{low * 100:+.1f}, {high * 100:+.1f}]: {against['verdict']}"
    )


def _export(store: Store, tenant: str, path: str) -> None:
    portable.check_format(path)
    document = portable.export_document(tenant, store.strategies(tenant))
    text = portable.dump(document, path)
    if path == "-":
        sys.stdout.write(text)
        return
    Path(path).write_text(text, encoding="utf-8")
    count = len(document["strategies"])
    print(f"exported {count} strateg{'y' if count == 1 else 'ies'} of tenant {tenant} to {path}")


def _import(store: Store, tenant: str, path: str) -> None:
    portable.check_format(path)
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"{path}: {exc.strerror}") from None
    document = portable.parse(raw, path)
    result = store.import_strategies(tenant, [s.entry() for s in document.strategies])
    print(
        f"tenant {tenant}: {len(result.added)} added, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged"
    )
    for label, ids in (("added", result.added), ("updated", result.updated)):
        if ids:
            print(f"{label}: {', '.join(map(str, ids))}")
    if result.capped:
        print(f"retired (over the active limit): {', '.join(map(str, result.capped))}")


def _decide(store: Store, tenant: str, strategy_id: int, command: str) -> None:
    before = store.strategy(tenant, strategy_id)
    status, kind = DECISIONS[command]
    if before.status == status:
        print(f"strategy {strategy_id} is already {status}")
        return
    after = store.set_status(tenant, strategy_id, status, kind=kind, source="cli")
    print(f"strategy {strategy_id}: {before.status} -> {after.status}")


def _learn(store: Store, tenant: str, state: str | None, review: bool | None) -> None:
    if state is None and review is None:
        tenants = store.tenants()
        if not tenants:
            print("no tenants configured: learning is off for every tenant")
        for t in tenants:
            print(_tenant_line(t))
        return
    learning = None if state is None else state == "on"
    print(_tenant_line(store.configure_tenant(tenant, learning=learning, review=review)))


def _tenant_line(t: TenantSettings) -> str:
    learning = "on" if t.learning else "off"
    review = "on" if t.review else "off"
    return f"tenant {t.name}: learning {learning}, review {review}"


# ---- memory -----------------------------------------------------------------------------------


def _memory(store: Store, args: argparse.Namespace) -> int:
    tenant: str = args.tenant
    if args.memory_command == "clear":
        count = store.clear_episodes(tenant, args.conversation)
        scope = f"conversation {args.conversation}" if args.conversation else "all conversations"
        print(f"deleted {count} episode{'' if count == 1 else 's'} of tenant {tenant} ({scope})")
        return 0
    if args.limit < 1:
        raise InvalidRequest("--limit must be at least 1", param="limit")
    episodes = store.episodes(tenant, args.conversation, limit=args.limit)
    if args.json:
        _json(
            [
                {
                    "id": e.id,
                    "conversation": e.conversation,
                    "request_id": e.request_id,
                    "created_at": portable.iso(e.created_at),
                    "outcome": e.outcome,
                    "question": e.question,
                    "answer": e.answer,
                }
                for e in episodes
            ]
        )
        return 0
    if not episodes:
        print("no episodes")
        return 0
    outcome = {None: "-", True: "correct", False: "wrong"}
    table = [("ID", "CONVERSATION", "CREATED (UTC)", "OUTCOME", "QUESTION")]
    table += [
        (
            str(e.id),
            e.conversation,
            f"{e.created_at:%Y-%m-%d %H:%M:%S}",
            outcome[e.outcome],
            _first_line(e.question),
        )
        for e in episodes
    ]
    _table(table)
    return 0


def _first_line(text: str) -> str:
    """The first line, cut to PREVIEW characters; "..." marks that more follows."""
    lines = text.strip().splitlines() or [""]
    line = lines[0]
    if len(line) > PREVIEW:
        return line[: PREVIEW - 3].rstrip() + "..."
    return line + " ..." if len(lines) > 1 else line


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column is left as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def _json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
