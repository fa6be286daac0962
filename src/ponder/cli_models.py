"""`ponder models`: the offline model catalog, what is installed, and how to get the rest.

Listing never assembles or hashes a model: "ready" says whether a verified assembled file is
already in the cache (the first use of a model joins its parts, a few seconds per gigabyte).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ponder import catalog
from ponder.config import Settings


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the offline models: installed or not, how to install")
    models.add_argument("--json", action="store_true", help="print JSON")


def rows(settings: Settings) -> list[dict[str, Any]]:
    try:
        default: str | None = catalog.default_spec().id
    except catalog.ModelError:
        default = None
    out = []
    for spec in catalog.CATALOG:
        installed = catalog.is_installed(spec)
        out.append(
            {
                "id": spec.id,
                "default": spec.id == default,
                "installed": installed,
                "ready": installed and catalog.is_assembled(spec, settings.model_cache_dir),
                "size_mb": round(spec.size / 1e6),
                "tools": spec.tools,
                "context_length": spec.context_length,
                "description": spec.description,
                "install": None if installed else spec.install,
            }
        )
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    table = rows(settings)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    header = f"{'id':<20} {'installed':<10} {'ready':<6} {'size':>8} {'tools':<6} {'context':>8}"
    print(header)
    for r in table:
        mark = " (default)" if r["default"] else ""
        print(
            f"{r['id']:<20} {'yes' if r['installed'] else 'no':<10} "
            f"{'yes' if r['ready'] else 'no':<6} {r['size_mb']:>5} MB "
            f"{'yes' if r['tools'] else 'no':<6} {r['context_length']:>8}  "
            f"{r['description']}{mark}"
        )
        if r["install"]:
            print(f"{'':<20} install: {r['install']}")
    return 0
