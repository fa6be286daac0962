"""The bench runner: asks every item of a suite through each approach, one result per line.

A run lives in one directory (`--out`): `meta.json` says what was run, `items.jsonl` gets one
`ItemResult` per line, appended and flushed as each item finishes, so an interrupted run loses
at most the items in flight. Running again with the same settings and `--out` resumes: what is
already in `items.jsonl` is not asked again (more approaches may be added). The report is
written from every result there, old and new.

Every request goes over HTTP through the `openai` client, so Ponder and a plain
OpenAI-compatible upstream are measured the same way. Without `base_url` Ponder is started
in-process (on the embedded model unless the PONDER_* settings say otherwise), with its SPL
store in the run directory so what `--spl-train` learns stays with the run.

`--spl-train N`: the first N items are the training split, the rest the test split (disjoint
by construction). The `spl` approach first learns on the training split, one item after the
other with the ground truth (learning depends on order; a sequential pass is reproducible),
then `none` and `spl` (plus any other approaches) are evaluated on the test split with
learning off.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai

from ponder.backends.base import Backend
from ponder.bench import report
from ponder.bench.asker import Asker
from ponder.bench.report import BASELINE as NONE
from ponder.bench.report import SPL
from ponder.bench.results import (
    ITEMS_FILE,
    META_FILE,
    TRACES_FILE,
    JsonLines,
    ResultWriter,
    check_resumable,
    read_meta,
    read_results,
    write_meta,
)
from ponder.bench.suites import get_suite
from ponder.bench.types import Item, ItemResult, Suite, Summary
from ponder.errors import InvalidRequest

DB_FILE = "ponder.db"
RESULTS_DIR = Path("results")
SOURCE_ROOT = Path(__file__).resolve().parents[3]
"""Where this Ponder's source sits when it runs from a checkout: the folder holding `src/`."""


def source_code(root: Path = SOURCE_ROOT) -> str | None:
    """The commit of the Ponder source under `root`, with "+changes" when `src/` differs from
    it; None when `root` is not the top of a git checkout of Ponder (an installed package, or
    no git)."""
    if not ((root / "pyproject.toml").is_file() and (root / "src" / "ponder").is_dir()):
        return None

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None
        head = git("rev-parse", "--short=7", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+changes" if changed else head


def default_out(suite: str) -> Path:
    return RESULTS_DIR / f"{suite}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


@dataclass
class BenchConfig:
    """One bench run. `approaches` are strategy routes ("none" is the model itself);
    `base_url` None starts Ponder in-process; `model` None takes the endpoint's first model."""

    suite: str = "arith"
    path: Path | None = None
    limit: int | None = None
    approaches: list[str] | None = None
    """Default: none, and spl on a `--spl-train` run."""
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    concurrency: int = 8
    seed: int = 0
    out: Path | None = None
    """Default: results/<suite>-<UTC timestamp>."""
    max_tokens: int = 256
    temperature: float = 0.0
    spl_train: int = 0
    """Training items for the SPL learning curve (0: no training split)."""
    timeout: float = 600.0
    """Seconds one request may take (Ponder's own default deadline)."""
    retries: int = 2
    """How often the client retries a connection error, a 429 or a 5xx."""
    ponder: dict[str, Any] | None = None
    """The `ponder` options every request of the run sends (strategy options such as
    `{"sc": {"samples": 8}}`); a resumed run must send the same."""
    trace: bool = False
    """Ask Ponder for each request's trace and keep it in `traces.jsonl` (a Ponder endpoint
    only: another upstream may refuse the `ponder` field)."""

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = default_out(self.suite)
        if self.approaches is None:
            self.approaches = [NONE, SPL] if self.spl_train else [NONE]

    @property
    def out_dir(self) -> Path:
        assert self.out is not None  # set in __post_init__
        return self.out

    def eval_approaches(self) -> list[str]:
        """The approaches evaluated, in order, each once."""
        return list(dict.fromkeys(self.approaches or ()))

    def trains(self) -> bool:
        """Whether this run learns first: a `--spl-train` run that evaluates `spl`. A run that
        shares its items but not `spl` (a baseline added later) skips the training split."""
        return self.spl_train > 0 and SPL in self.eval_approaches()

    def check(self, suite: Suite) -> None:
        """Refuse settings that cannot run, before anything is started."""
        if suite.needs_path and self.path is None:
            raise InvalidRequest(
                f"The {suite.name} suite reads a JSONL file: give --path.", param="--path"
            )
        if self.path is not None and not self.path.is_file():
            raise InvalidRequest(f"{self.path} is not a file.", param="--path")
        if self.limit is not None and self.limit < 1:
            raise InvalidRequest("--limit must be at least 1.", param="--limit")
        if self.concurrency < 1:
            raise InvalidRequest("--concurrency must be at least 1.", param="--concurrency")
        if self.max_tokens < 1:
            raise InvalidRequest("--max-tokens must be at least 1.", param="--max-tokens")
        if self.spl_train < 0:
            raise InvalidRequest("--spl-train must not be negative.", param="--spl-train")
        if not self.approaches or not all(a.strip() for a in self.approaches):
            raise InvalidRequest("--approaches names no approach.", param="--approaches")


def split(items: Sequence[Item], train: int) -> tuple[list[Item], list[Item]]:
    """(training split, test split): the first `train` items, then the rest."""
    return list(items[:train]), list(items[train:])


def _meta(config: BenchConfig, model: str | None) -> dict[str, Any]:
    return {
        "suite": config.suite,
        "path": str(config.path.resolve()) if config.path is not None else None,
        "limit": config.limit,
        "seed": config.seed,
        "model": model,
        "approaches": config.eval_approaches(),
        "base_url": config.base_url,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "spl_train": config.spl_train,
        "ponder": config.ponder,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- the endpoint ----------------------------------------------------------------------------


DEADLINE_SHARE = 0.9
"""The in-process server's request deadline, as a share of the client's `timeout` (540 s of the
default 600 s): a slower request fails as the item's error, with the server's own reason."""


@asynccontextmanager
async def endpoint(config: BenchConfig, backend: Backend | None = None) -> AsyncIterator[str]:
    """The base URL to ask: `config.base_url`, or Ponder served in-process for the run (over
    `backend` when given, else the one the settings name), its store in the run directory."""
    if config.base_url is not None:
        yield config.base_url
        return
    from ponder.config import Settings
    from ponder.proxy import create_app
    from ponder.serving import running_server

    settings = Settings(
        database_url=f"sqlite:///{(config.out_dir / DB_FILE).resolve()}",
        # a request ends with Ponder's 504 a little before the client gives up on it
        deadline_s=config.timeout * DEADLINE_SHARE,
        spl_client_learning=True,
        api_keys=[],  # loopback only, for this run's client alone
    )
    app = await asyncio.to_thread(create_app, settings, backend)
    # Starting and stopping the server block (the model loads, the thread joins): off the loop.
    stack = ExitStack()
    url = await asyncio.to_thread(stack.enter_context, running_server(app))
    try:
        yield url
    finally:
        await asyncio.to_thread(stack.close)


async def first_model(client: openai.AsyncOpenAI) -> str:
    try:
        page = await client.models.list()
    except openai.APIError as exc:
        raise InvalidRequest(f"Cannot list the models at {client.base_url}: {exc}") from exc
    if not page.data:
        raise InvalidRequest(f"{client.base_url} lists no models: give --model.", param="--model")
    return page.data[0].id


# --- the run ---------------------------------------------------------------------------------


async def run(
    config: BenchConfig, progress: bool = True, backend: Backend | None = None
) -> list[Summary]:
    """Run (or resume) the bench, write the report into `config.out`, return its summary.
    `backend` serves the in-process Ponder instead of the settings' backend (for tests)."""
    suite = get_suite(config.suite)
    config.check(suite)
    train_n = config.spl_train
    items = _load(suite, config.path, config.limit, train_n, config.seed)
    train, test = split(items, train_n)
    if not test:
        raise InvalidRequest(
            f"No items to evaluate: the suite gave {len(items)}, --spl-train takes {train_n}.",
            param="--spl-train" if train_n else "--limit",
        )

    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(config, config.model)
    previous = read_meta(out)
    if previous is not None:
        check_resumable(previous, meta, out)
    unique = _unique(read_results(out / ITEMS_FILE, repair=True))
    # an item that failed is asked again: its error stands only until the run resumes
    done = {(r.phase, r.approach, r.item_id) for r in unique if not r.error}

    async with (
        endpoint(config, backend) as base_url,
        openai.AsyncOpenAI(
            base_url=base_url,
            api_key=config.api_key or "unused",
            max_retries=config.retries,
            timeout=config.timeout,
        ) as client,
    ):
        model = config.model or await first_model(client)
        meta["model"] = model
        if previous is not None:
            check_resumable(previous, meta, out)
            grown = [*previous.get("approaches", []), *meta["approaches"]]
            limits = (previous.get("limit"), meta["limit"])
            limit = None if None in limits else max(limits)
            meta = {**previous, "approaches": list(dict.fromkeys(grown)), "limit": limit}
        write_meta(out, meta)

        writer = ResultWriter(out / ITEMS_FILE)
        traces = JsonLines(out / TRACES_FILE) if config.trace else None
        code = source_code() if config.base_url is None else None
        asker = Asker(client, suite, config, model, writer, done, unique, progress, traces, code)
        try:
            if config.trains():
                await asker.phase("train", SPL, train, concurrency=1, truth=True)
            for approach in config.eval_approaches():
                # On an SPL run the test split must not teach the store what it is tested on.
                ponder = {SPL: {"learn": False}} if train_n and approach == SPL else None
                await asker.phase("eval", approach, test, config.concurrency, ponder)
        finally:
            writer.close()
            if traces is not None:
                traces.close()

    return _report(out, _unique(asker.results), meta, items)


def report_only(out: Path) -> list[Summary]:
    """Draw a run directory's report again from its files, asking nothing: a run still going,
    or stopped, shows what it has so far."""
    meta = read_meta(out)
    if meta is None:
        raise InvalidRequest(f"{out} holds no run: it has no {META_FILE}.", param="--out")
    suite = get_suite(meta["suite"])
    limit, train = meta.get("limit"), meta.get("spl_train") or 0
    path = Path(meta["path"]) if meta.get("path") else None
    items = _load(suite, path, limit, train, meta.get("seed", 0))
    return _report(out, _unique(read_results(out / ITEMS_FILE)), meta, items)


def _load(suite: Suite, path: Path | None, limit: int | None, train: int, seed: int) -> list[Item]:
    """The run's items: the training split and at most `limit` more to evaluate."""
    return suite.load(path, None if limit is None else limit + train, seed)


def _report(
    out: Path, results: Sequence[ItemResult], meta: dict[str, Any], items: Sequence[Item]
) -> list[Summary]:
    """Write the report of `results` into `out`, in a stable order, and return its summary."""
    ordered = _ordered(results, meta.get("approaches", []), items)
    summaries = report.summarize(ordered)
    report.write_report(out, summaries, meta, ordered)
    return summaries


def _unique(results: Sequence[ItemResult]) -> list[ItemResult]:
    """One result of each (phase, approach, item), where a resumed run asked one again after an
    interruption or a failure: the first that did not fail, else the first."""
    chosen: dict[tuple[str, str, str], ItemResult] = {}
    for r in results:
        key = (r.phase, r.approach, r.item_id)
        if key not in chosen or (chosen[key].error and not r.error):
            chosen[key] = r
    return list(chosen.values())


def _ordered(
    results: Sequence[ItemResult], approaches: Sequence[str], items: Sequence[Item]
) -> list[ItemResult]:
    """Results in a stable order (training first, then the approaches as run, items in suite
    order), however the requests finished or the run was resumed."""
    approach_rank = {a: i for i, a in enumerate(approaches)}
    item_rank = {item.id: i for i, item in enumerate(items)}
    return sorted(
        results,
        key=lambda r: (
            r.phase != "train",
            approach_rank.get(r.approach, len(approach_rank)),
            item_rank.get(r.item_id, len(item_rank)),
        ),
    )
