"""The bench report: one summary per approach, written as Markdown, JSON and two PNG plots.

The numbers come from the per-item results alone, so a resumed or re-reported run summarizes
exactly what its `items.jsonl` holds. Every file is written under a temporary name and renamed
into place: an interrupted report never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any

from ponder.bench import plots
from ponder.bench.stats import (
    difference_interval,
    paired_difference_interval,
    percentile,
    wilson,
)
from ponder.bench.types import ItemResult, Results, Summary

SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
ACCURACY_PNG = "accuracy_vs_tokens.png"
LATENCY_PNG = "latency.png"
BASELINE = "none"
SPL = "spl"
_CURVE_POINTS = 10

_META_LABELS = {
    "suite": "Suite",
    "model": "Model",
    "items": "Items",
    "seed": "Seed",
    "date": "Date",
    "base_url": "Server",
    "code": "Code (commit, items)",
}


_SHOWN_AS = {"started": "date"}
"""Meta keys already in the header under another label."""


def eval_results(results: Iterable[ItemResult]) -> list[ItemResult]:
    """The eval-phase results, one per (approach, item): when an item appears twice (a retried
    line after a resume) the later line is the one that counts."""
    latest: dict[tuple[str, str], ItemResult] = {}
    for result in results:
        if result.phase == "eval":
            key = (result.approach, result.item_id)
            latest.pop(key, None)  # re-insert so the order is that of the last line
            latest[key] = result
    return list(latest.values())


def _by_approach(results: Iterable[ItemResult]) -> dict[str, list[ItemResult]]:
    groups: dict[str, list[ItemResult]] = {}
    for result in results:
        groups.setdefault(result.approach, []).append(result)
    return groups


def summarize(results: Results) -> list[Summary]:
    """One summary per approach over the eval items, approaches in first-seen order. A failed
    request counts as a wrong answer, and its tokens and latency count too: they were spent."""
    first_seen: dict[str, None] = {}
    for result in results:
        if result.phase == "eval":
            first_seen.setdefault(result.approach)
    groups = _by_approach(eval_results(results))
    return [_summary(approach, groups[approach]) for approach in first_seen]


def _summary(approach: str, rows: list[ItemResult]) -> Summary:
    correct = sum(r.correct for r in rows)
    low, high = wilson(correct, len(rows))
    latencies = [r.latency_s for r in rows]
    calls = [r.backend_calls for r in rows if r.backend_calls is not None]
    return Summary(
        approach=approach,
        items=len(rows),
        correct=correct,
        accuracy=correct / len(rows),
        ci_low=low,
        ci_high=high,
        mean_tokens=fmean(r.total_tokens for r in rows),
        mean_backend_calls=fmean(calls) if calls else None,
        mean_latency_s=fmean(latencies),
        p50_latency_s=percentile(latencies, 50),
        p95_latency_s=percentile(latencies, 95),
        errors=sum(r.error is not None for r in rows),
    )


def spl_curve(results: Results) -> dict[str, Any] | None:
    """What SPL learning bought on a `--spl-train` run, or None for any other run.

    The shape: {"train_items", "train_correct", "train_accuracy", "train_curve": [[items seen,
    cumulative accuracy], ...] (up to 10 points), "test_items", "baseline" and "spl" (each
    {"approach", "items", "correct", "accuracy", "ci_low", "ci_high"} on the test split),
    "difference" (spl minus baseline accuracy), "difference_ci_low", "difference_ci_high"}."""
    train = [r for r in results if r.phase == "train"]
    groups = _by_approach(eval_results(results))
    if not train or BASELINE not in groups or SPL not in groups:
        return None
    baseline, spl = _summary(BASELINE, groups[BASELINE]), _summary(SPL, groups[SPL])
    low, high = difference_interval(baseline.correct, baseline.items, spl.correct, spl.items)
    train_correct = sum(r.correct for r in train)
    return {
        "train_items": len(train),
        "train_correct": train_correct,
        "train_accuracy": train_correct / len(train),
        "train_curve": _cumulative(train),
        "test_items": max(baseline.items, spl.items),
        "baseline": _arm(baseline),
        "spl": _arm(spl),
        "difference": spl.accuracy - baseline.accuracy,
        "difference_ci_low": low,
        "difference_ci_high": high,
    }


def against_baseline(results: Results) -> list[dict[str, Any]]:
    """Each approach against `none` on the items both answered: {"approach", "items",
    "baseline_accuracy", "accuracy", "difference", "ci_low", "ci_high" (Newcombe's paired 95%
    interval), "only_baseline", "only_approach" (items only one got right), "verdict"}."""
    groups = _by_approach(eval_results(results))
    if BASELINE not in groups:
        return []
    base = {r.item_id: r.correct for r in groups[BASELINE]}
    compared = []
    for approach, rows in groups.items():
        pairs = [(base[r.item_id], r.correct) for r in rows if r.item_id in base]
        if approach == BASELINE or not pairs:
            continue
        both = sum(a and b for a, b in pairs)
        only_base = sum(a and not b for a, b in pairs)
        only_approach = sum(b and not a for a, b in pairs)
        low, high = paired_difference_interval(
            both, only_base, only_approach, len(pairs) - both - only_base - only_approach
        )
        compared.append(
            {
                "approach": approach,
                "items": len(pairs),
                "baseline_accuracy": (both + only_base) / len(pairs),
                "accuracy": (both + only_approach) / len(pairs),
                "difference": (only_approach - only_base) / len(pairs),
                "ci_low": low,
                "ci_high": high,
                "only_baseline": only_base,
                "only_approach": only_approach,
                "verdict": verdict(low, high),
            }
        )
    return compared


def verdict(low: float, high: float) -> str:
    """What a difference's 95% interval says, in words."""
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "cannot be told apart"


def _arm(summary: Summary) -> dict[str, Any]:
    keys = ("approach", "items", "correct", "accuracy", "ci_low", "ci_high")
    return {key: getattr(summary, key) for key in keys}


def _cumulative(train: list[ItemResult]) -> list[list[float]]:
    """Cumulative training accuracy at up to 10 evenly spaced points, ending at the last item."""
    step = max(1, -(-len(train) // _CURVE_POINTS))
    marks = sorted({*range(step, len(train), step), len(train)})
    return [[n, sum(r.correct for r in train[:n]) / n] for n in marks]


# --- rendering -------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value * 100:.1f}"


def _accuracy_cell(s: Summary) -> str:
    return f"{_pct(s.accuracy)}% [{_pct(s.ci_low)}, {_pct(s.ci_high)}]"


def _row(s: Summary) -> str:
    calls = "-" if s.mean_backend_calls is None else f"{s.mean_backend_calls:.2f}"
    cells = [
        s.approach,
        _accuracy_cell(s),
        f"{s.mean_tokens:.1f}",
        calls,
        f"{s.mean_latency_s:.2f}",
        f"{s.p50_latency_s:.2f}",
        f"{s.p95_latency_s:.2f}",
        str(s.errors),
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| Approach | Accuracy (95% CI) | Mean tokens | Mean backend calls | Mean latency (s) "
    "| p50 latency (s) | p95 latency (s) | Errors |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|"
)


def _full_meta(meta: dict[str, Any], summaries: list[Summary]) -> dict[str, Any]:
    """The run's meta with the header's defaults filled in when the caller did not give them:
    the date (the run's "started" time, else now) and the item count."""
    full = dict(meta)
    if not full.get("date"):
        full["date"] = full.get("started") or datetime.now(UTC).isoformat(timespec="seconds")
    full.setdefault("items", max((s.items for s in summaries), default=0))
    return full


def code_versions(results: Iterable[ItemResult]) -> str | None:
    """The commits the results were answered at, each with its number of results, in the order
    first met ("78409c8 (120), be3b6f3 (30)"); None when no result says."""
    counts = Counter(r.code for r in results if r.code)
    return ", ".join(f"{code} ({n})" for code, n in counts.items()) or None


def _meta_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


COMPARISON_HEADER = (
    "| Approach | Items | none | Approach | Difference (paired 95% CI) "
    "| Only none right | Only approach right | Verdict |\n"
    "|---|---:|---:|---:|---|---:|---:|---|"
)


def _comparison_row(c: dict[str, Any]) -> str:
    cells = [
        c["approach"],
        str(c["items"]),
        f"{_pct(c['baseline_accuracy'])}%",
        f"{_pct(c['accuracy'])}%",
        f"{c['difference'] * 100:+.1f} [{c['ci_low'] * 100:+.1f}, {c['ci_high'] * 100:+.1f}]",
        str(c["only_baseline"]),
        str(c["only_approach"]),
        c["verdict"],
    ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(
    summaries: list[Summary],
    meta: dict[str, Any],
    curve: dict[str, Any] | None = None,
    compared: list[dict[str, Any]] | None = None,
) -> str:
    """summary.md: the run's meta, the table, each approach against none on the same items,
    and the SPL comparison when there is one."""
    title = meta.get("suite", "run")
    lines = [f"# Ponder bench: {title}", ""]
    for key, label in _META_LABELS.items():
        value = meta.get(key)
        if key == "base_url" and not value:
            value = "in-process"
        if value is not None:
            lines.append(f"- {label}: {value}")
    lines += [
        f"- {key}: {_meta_value(value)}"
        for key, value in meta.items()
        if key not in _META_LABELS and key not in _SHOWN_AS and value is not None
    ]
    lines += ["", TABLE_HEADER, *(_row(s) for s in summaries), ""]
    if compared:
        lines += [
            "## Against none, on the same items",
            "",
            COMPARISON_HEADER,
            *(_comparison_row(c) for c in compared),
            "",
        ]
    if curve is not None:
        base, spl = curve["baseline"], curve["spl"]
        lines += [
            "## SPL learning curve",
            "",
            f"- Trained on {curve['train_items']} items "
            f"(accuracy while learning {_pct(curve['train_accuracy'])}%).",
            f"- Test split: {curve['test_items']} items.",
            f"- {base['approach']}: {_pct(base['accuracy'])}% "
            f"[{_pct(base['ci_low'])}, {_pct(base['ci_high'])}]",
            f"- {spl['approach']}: {_pct(spl['accuracy'])}% "
            f"[{_pct(spl['ci_low'])}, {_pct(spl['ci_high'])}]",
            f"- Difference: {curve['difference'] * 100:+.1f} points "
            f"[{curve['difference_ci_low'] * 100:+.1f}, {curve['difference_ci_high'] * 100:+.1f}]",
            "",
        ]
    return "\n".join(lines)


def render_json(
    summaries: list[Summary],
    meta: dict[str, Any],
    curve: dict[str, Any] | None = None,
    compared: list[dict[str, Any]] | None = None,
) -> str:
    """summary.json: {"meta", "summaries", "against_none" (each approach against none on the
    same items), "spl_curve" (only for --spl-train runs)}."""
    body: dict[str, Any] = {
        "meta": meta,
        "summaries": [asdict(s) for s in summaries],
        "against_none": compared or [],
    }
    if curve is not None:
        body["spl_curve"] = curve
    return json.dumps(body, indent=2, default=str) + "\n"


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_report(
    out_dir: Path, summaries: list[Summary], meta: dict[str, Any], results: Results
) -> list[Path]:
    """Write summary.md, summary.json, accuracy_vs_tokens.png and latency.png into `out_dir`
    (the SPL comparison joins the first two on `--spl-train` runs); return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    full = _full_meta(meta, summaries)
    code = code_versions(results)
    if code is not None:
        full.setdefault("code", code)
    curve = spl_curve(results)
    compared = against_baseline(results)
    paths = [
        _write_text(out_dir / SUMMARY_MD, render_markdown(summaries, full, curve, compared)),
        _write_text(out_dir / SUMMARY_JSON, render_json(summaries, full, curve, compared)),
    ]
    latencies = _by_approach(eval_results(results))
    title = " / ".join(str(full[k]) for k in ("suite", "model") if full.get(k))
    paths.append(_atomic(out_dir / ACCURACY_PNG, lambda tmp: plots.accuracy(tmp, summaries, title)))
    groups = [(s.approach, [r.latency_s for r in latencies.get(s.approach, [])]) for s in summaries]
    paths.append(_atomic(out_dir / LATENCY_PNG, lambda tmp: plots.latency(tmp, groups, title)))
    return paths
