"""A run directory's files: `items.jsonl` (one `ItemResult` per line, appended and flushed as
each item finishes), `meta.json` (what was run) and, with `--trace`, `traces.jsonl` (each
request's strategy trace as Ponder returned it). Resuming reads the first two back: the results
say what is done, the meta says whether the directory holds the same run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TextIO

from ponder.bench.types import ItemResult
from ponder.errors import InvalidRequest

ITEMS_FILE = "items.jsonl"
TRACES_FILE = "traces.jsonl"
META_FILE = "meta.json"
MATCHED = ("suite", "path", "seed", "model", "max_tokens", "temperature", "spl_train", "ponder")
"""meta.json fields a resumed run must share with the first one. Approaches may grow, and
`limit` may change: a suite's items come in a fixed order, so another limit asks a prefix or an
extension of the same items (an approach measured on fewer items is compared on those)."""

_RESULT_FIELDS = tuple(f.name for f in fields(ItemResult))


def read_results(path: Path, repair: bool = False) -> list[ItemResult]:
    """The results in an `items.jsonl` (none when it does not exist). A last line that does not
    parse was cut short by an interruption and is ignored; with `repair` it is also removed, so
    that the next appended line starts clean."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    results = []
    for number, line in enumerate(lines, start=1):
        try:
            results.append(_parse_result(line))
        except (ValueError, TypeError) as exc:
            if number < len(lines):
                raise InvalidRequest(
                    f"{path}, line {number} is not an item result ({exc}); choose another --out.",
                    param="--out",
                ) from exc
            if repair:
                path.write_text("".join(lines[:-1]), encoding="utf-8")
            return results
    if repair and lines and not lines[-1].endswith("\n"):
        with path.open("a", encoding="utf-8") as handle:
            handle.write("\n")
    return results


def _parse_result(line: str) -> ItemResult:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return ItemResult(**{k: data[k] for k in _RESULT_FIELDS if k in data})


class JsonLines:
    """Appends JSON objects to a file, one line each, flushed at once. A last line an
    interruption cut short is ended first, so that the next object starts a line of its own."""

    def __init__(self, path: Path) -> None:
        self._handle: TextIO = path.open("a", encoding="utf-8")
        if not _ends_a_line(path):
            self._handle.write("\n")

    def write_row(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _ends_a_line(path: Path) -> bool:
    """Whether the file is empty or its last byte ends a line (only that byte is read)."""
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


class ResultWriter(JsonLines):
    """Appends results to `items.jsonl`."""

    def write(self, result: ItemResult) -> None:
        self.write_row(asdict(result))


def read_meta(out: Path) -> dict[str, Any] | None:
    path = out / META_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidRequest(f"{path} is not JSON; choose another --out.", param="--out") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"{path} is not a run's meta.json; choose another --out.", param="--out"
        )
    return data


def check_resumable(previous: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    """A run may only resume the run it repeats. `model` None is not yet known (taken from the
    endpoint) and is checked once it is."""
    keys = [k for k in MATCHED if not (k == "model" and meta[k] is None)]
    differ = [
        f"{k}: {previous.get(k)!r} there, {meta[k]!r} now"
        for k in keys
        if previous.get(k) != meta[k]
    ]
    if differ:
        raise InvalidRequest(
            f"{out} holds another run ({'; '.join(differ)}). Choose another --out, or repeat "
            "that run's settings to resume it.",
            param="--out",
        )


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
