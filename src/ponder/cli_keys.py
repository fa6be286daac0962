"""`ponder keys ...`: manage the keys file (`--file`, default `PONDER_KEYS_FILE`).

`add` makes a new random key, stores only its SHA-256 with the key's name, tenant and
permissions, and prints the key once; nobody can read it back afterwards. `hash` stores the
hash of a key the operator brings (read from stdin, so it stays out of the shell history).
A running server reads the file when it starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ponder.config import DEFAULT_TENANT, Settings
from ponder.keys import KeyEntry, KeysFile, digest, new_key, read_keys_file, write_keys_file


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys: add, list, remove (the keys file)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", type=Path, help="the keys file (default: PONDER_KEYS_FILE)")

    for name, help_text in (
        ("add", "make a new key, store its hash, print the key once"),
        ("hash", "store the hash of a key read from stdin"),
    ):
        cmd = keys_sub.add_parser(name, parents=[common], help=help_text)
        cmd.add_argument("name", help="a name for the key (letters, digits, _ . -)")
        cmd.add_argument("--tenant", default=DEFAULT_TENANT, help="default: %(default)s")
        cmd.add_argument(
            "--no-learning",
            dest="learning",
            action="store_false",
            help="its requests may not change the tenant's strategies or memories",
        )
        cmd.add_argument(
            "--strategies", help="comma-separated strategies it may run (default: all)"
        )
        cmd.add_argument(
            "--rate-limit", type=int, help="requests per minute (default: the server's)"
        )
    keys_sub.add_parser("list", parents=[common], help="list the keys (names, never keys)")
    remove = keys_sub.add_parser("remove", parents=[common], help="remove a key by name")
    remove.add_argument("name")


def run(args: argparse.Namespace, settings: Settings) -> int:
    path: Path | None = args.file or settings.keys_file
    if path is None:
        raise ValueError("no keys file: pass --file or set PONDER_KEYS_FILE")
    keys = read_keys_file(path)
    command = args.keys_command
    if command == "list":
        for k in keys.keys:
            strategies = ",".join(k.strategies) if k.strategies is not None else "all"
            limit = k.rate_limit_per_minute if k.rate_limit_per_minute is not None else "server"
            print(
                f"{k.name}\ttenant={k.tenant}\tlearning={'on' if k.learning else 'off'}"
                f"\tstrategies={strategies}\trate_limit={limit}\tsha256={k.sha256[:12]}..."
            )
        return 0
    if command == "remove":
        kept = [k for k in keys.keys if k.name != args.name]
        if len(kept) == len(keys.keys):
            raise ValueError(f"no key named {args.name!r} in {path}")
        write_keys_file(path, KeysFile(keys=kept))
        print(f"removed {args.name}; restart the server for it to take effect", file=sys.stderr)
        return 0
    if command == "add":
        key = new_key()
    else:
        key = sys.stdin.readline().strip()
        if len(key) < 16:
            raise ValueError("a key needs at least 16 characters (read from stdin)")
    allowed = (
        [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    )
    entry = KeyEntry(
        name=args.name,
        tenant=args.tenant,
        sha256=digest(key),
        learning=args.learning,
        strategies=allowed,
        rate_limit_per_minute=args.rate_limit,
    )
    write_keys_file(path, KeysFile(keys=[*keys.keys, entry]))  # validated: names unique
    if command == "add":
        print(key)
        print(
            f"added {args.name} for tenant {args.tenant}: the key above is shown only once",
            file=sys.stderr,
        )
    return 0
