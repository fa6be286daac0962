"""The file format of `ponder spl export` / `ponder spl import`, and the JSON shape of a strategy.

An export is a document a person can read and edit::

    tenant: default
    exported_at: '2025-01-01T12:00:00+00:00'
    strategies:
    - id: 3
      problem_type: arithmetic
      status: active
      version: 2
      attempts: 7
      successes: 5
      text: |-
        Write down every intermediate result.
        Check the units at the end.

Importing it back changes nothing; an edited `text` or `status` is applied (when the file's
`version` is still the stored one), and an entry without an `id` is a new strategy. The whole
file is validated before anything is written, and a mistake is reported with the entry and the
field it is in.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ponder.errors import InvalidRequest
from ponder.spl_store.decisions import Comparison
from ponder.spl_store.records import Baseline, EventRecord, ImportEntry, Status, StrategyRecord
from ponder.spl_store.rows import check_type, text_problem

FORMATS = (".yaml", ".yml", ".json")


class PortableStrategy(BaseModel):
    """One entry of an export file."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[int, Field(ge=1)] | None = None
    problem_type: str
    status: Status = "candidate"
    version: Annotated[int, Field(ge=1)] | None = None
    attempts: int = Field(0, ge=0)
    successes: int = Field(0, ge=0)
    text: str

    @field_validator("problem_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        try:
            check_type(value)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        value = value.strip()
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _counters(self) -> PortableStrategy:
        if self.successes > self.attempts:
            raise ValueError("successes must not exceed attempts")
        return self

    @classmethod
    def of(cls, record: StrategyRecord) -> PortableStrategy:
        return cls(
            id=record.id,
            problem_type=record.problem_type,
            status=record.status,
            version=record.version,
            attempts=record.attempts,
            successes=record.successes,
            text=record.text,
        )

    def entry(self) -> ImportEntry:
        return ImportEntry(**self.model_dump())


class PortableFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = None
    """The tenant it was exported from: informative; an import goes to the tenant it is given."""
    exported_at: dt.datetime | None = None
    strategies: list[PortableStrategy]

    @model_validator(mode="after")
    def _unique_ids(self) -> PortableFile:
        seen: set[int] = set()
        for strategy in self.strategies:
            if strategy.id is not None:
                if strategy.id in seen:
                    raise ValueError(f"strategy id {strategy.id} appears more than once")
                seen.add(strategy.id)
        return self


# ---- export ---------------------------------------------------------------------------------


def strategy_fields(record: StrategyRecord) -> dict[str, Any]:
    """A strategy as JSON (the CLI's `--json` and the HTTP API share it)."""
    return {
        "id": record.id,
        "problem_type": record.problem_type,
        "status": record.status,
        "origin": record.origin,
        "parent_id": record.parent_id,
        "version": record.version,
        "attempts": record.attempts,
        "successes": record.successes,
        "success_rate": record.success_rate,
        "text": record.text,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }


def event_fields(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "request_id": event.request_id,
        "detail": event.detail,
        "created_at": iso(event.created_at),
    }


def iso(moment: dt.datetime) -> str:
    """ISO 8601 in UTC. SQLite hands back the stored UTC times without their zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def rate_label(record: StrategyRecord | Baseline) -> str:
    """ "67% (2/3)", or "- (0/0)" for an untried strategy or an empty baseline."""
    rate = record.success_rate if isinstance(record, StrategyRecord) else record.rate
    shown = "-" if rate is None else f"{rate:.0%}"
    return f"{shown} ({record.successes}/{record.attempts})"


def comparison_fields(
    baseline: Baseline | None, comparison: Comparison, confidence: float
) -> dict[str, Any]:
    """A strategy against its type's baseline, as JSON: the control arm's counts, and the
    difference of the rates with its interval and what it says."""
    return {
        "baseline": None
        if baseline is None
        else {
            "attempts": baseline.attempts,
            "successes": baseline.successes,
            "rate": baseline.rate,
        },
        "lift": comparison.lift,
        "interval": None if comparison.low is None else [comparison.low, comparison.high],
        "confidence": confidence,
        "verdict": comparison.verdict,
    }


def export_document(tenant: str, strategies: Sequence[StrategyRecord]) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "strategies": [PortableStrategy.of(r).model_dump() for r in strategies],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as block scalars (`|`), so an exported text reads and edits as text."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict[str, Any], path: str) -> str:
    """The document as the file `path` wants it: JSON for *.json, YAML otherwise."""
    if Path(path).suffix.lower() == ".json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def check_format(path: str) -> None:
    if path != "-" and Path(path).suffix.lower() not in FORMATS:
        raise InvalidRequest(f"{path}: the file name must end in .yaml, .yml or .json")


# ---- import ---------------------------------------------------------------------------------


def parse(raw: str, path: str) -> PortableFile:
    """Read and validate a whole file; `InvalidRequest` names the entry and field at fault."""
    try:
        data = json.loads(raw) if _kind(path) == "JSON" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"{path}: not valid {_kind(path)}: {exc}") from None
    try:
        return PortableFile.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"{path}: {describe(exc, data)}") from None


def describe(exc: ValidationError, data: object) -> str:
    """The first error, as "strategies[2] (id 7), field 'status': Input should be ..."."""
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "strategies" and isinstance(loc[1], int):
        where = f"strategies[{loc[1]}]"
        entry = data["strategies"][loc[1]] if isinstance(data, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("id"), int):
            where += f" (id {entry['id']})"
        field = ".".join(str(part) for part in loc[2:])
        return f"{where}, field '{field}': {message}" if field else f"{where}: {message}"
    if loc:
        return f"field '{'.'.join(str(p) for p in loc)}': {message}"
    return message


def _kind(path: str) -> str:
    return "JSON" if Path(path).suffix.lower() == ".json" else "YAML"
