"""Bench statistics and the report: intervals, percentiles, summaries and the written files."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from ponder.bench.report import (
    against_baseline,
    code_versions,
    render_markdown,
    spl_curve,
    summarize,
    write_report,
)
from ponder.bench.stats import (
    difference_interval,
    paired_difference_interval,
    percentile,
    wilson,
)
from ponder.bench.types import ItemResult, Summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def result(
    approach: str,
    item: int,
    correct: bool,
    *,
    tokens: tuple[int, int] = (10, 5),
    calls: int | None = 1,
    latency: float = 1.0,
    error: str | None = None,
    phase: str = "eval",
) -> ItemResult:
    return ItemResult(
        approach=approach,
        item_id=f"arith-0-{item}",
        question=f"q{item}",
        expected="1",
        answer="The answer is 1." if correct else "The answer is 2.",
        extracted="1" if correct else "2",
        correct=correct,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        backend_calls=calls,
        latency_s=latency,
        error=error,
        phase=phase,
    )


# --- stats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        # Newcombe (1998), Table I, Wilson score method:
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_known_values(correct: int, n: int, low: float, high: float) -> None:
    assert wilson(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible
    with pytest.raises(ValueError, match="correct <= n"):
        wilson(11, 10)


def test_difference_interval_known_value() -> None:
    # Newcombe (1998), method 10: 56/70 vs 48/80 -> difference 0.2, interval (0.0524, 0.3339).
    assert difference_interval(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=5e-5)


def test_paired_difference_interval_by_hand() -> None:
    """12 items both right, 5 only a, 2 only b, 21 neither (n=40): Wilson intervals of 17/40
    and 14/40 are [0.2851, 0.5780] and [0.2213, 0.5050]; the continuity-corrected correlation
    is (12*21 - 5*2 - 20) / sqrt(17*23*14*26) = 0.5885; b - a = -0.075, and the limits worked
    out by hand from Newcombe's method 10 are -0.2046 and +0.0595."""
    low, high = paired_difference_interval(12, 5, 2, 21)
    assert (low, high) == pytest.approx((-0.2046, 0.0595), abs=5e-4)
    # swapping the two approaches mirrors the interval
    assert paired_difference_interval(12, 2, 5, 21) == pytest.approx((-high, -low))


def test_paired_interval_is_narrower_than_the_unpaired_one_when_the_two_agree() -> None:
    paired = paired_difference_interval(60, 3, 9, 48)
    unpaired = difference_interval(63, 120, 69, 120)
    assert unpaired[0] < paired[0] < 0.05 < paired[1] < unpaired[1]
    # the same answers on every item: a difference of 0, known within a few points
    low, high = paired_difference_interval(60, 0, 0, 60)
    assert low < 0 < high and high - low < 0.1
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 95, 3.85),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([7.0], 95, 7.0),
        ([], 50, 0.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_matches_linear_interpolation_on_random_data() -> None:
    rng = random.Random(1)
    values = [rng.uniform(0, 10) for _ in range(37)]
    for q in (5, 50, 90, 95, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        percentile(values, 101)


# --- summaries -------------------------------------------------------------------------------


def hand_made() -> list[ItemResult]:
    return [
        result("spl", 9, True, phase="train"),  # training lines never count
        result("none", 0, True, tokens=(100, 20), calls=1, latency=1.0),
        result("none", 1, False, tokens=(100, 40), calls=1, latency=2.0),
        result("sc", 0, True, tokens=(100, 200), calls=5, latency=3.0),
        result("none", 2, True, tokens=(100, 60), calls=1, latency=3.0),
        result("none", 3, False, tokens=(0, 0), calls=None, latency=6.0, error="boom"),
        result("sc", 1, False, tokens=(100, 300), calls=None, latency=5.0, error="boom"),
        result("sc", 1, True, tokens=(100, 300), calls=5, latency=4.0),  # retried: last wins
    ]


def test_summarize_hand_made_results() -> None:
    none, sc = summarize(hand_made())
    low, high = wilson(2, 4)
    assert none == Summary(
        approach="none",
        items=4,
        correct=2,
        accuracy=0.5,
        ci_low=low,
        ci_high=high,
        mean_tokens=(120 + 140 + 160 + 0) / 4,
        mean_backend_calls=1.0,  # the failed request reported none: unknown, not zero
        mean_latency_s=3.0,
        p50_latency_s=2.5,
        p95_latency_s=pytest.approx(5.55),
        errors=1,
    )
    assert (sc.approach, sc.items, sc.correct, sc.accuracy, sc.errors) == ("sc", 2, 2, 1.0, 0)
    assert (sc.mean_tokens, sc.mean_backend_calls, sc.mean_latency_s) == (350.0, 5.0, 3.5)
    assert sc.ci_low == pytest.approx(wilson(2, 2)[0]) and sc.ci_high == 1.0


def test_summarize_without_backend_calls_and_without_results() -> None:
    upstream = [result("none", i, True, calls=None) for i in range(3)]
    (summary,) = summarize(upstream)
    assert summary.mean_backend_calls is None and summary.accuracy == 1.0
    assert summarize([]) == []
    assert summarize([result("spl", 0, True, phase="train")]) == []


# --- spl curve -------------------------------------------------------------------------------


def spl_run() -> list[ItemResult]:
    train = [result("spl", i, i % 4 != 0, phase="train") for i in range(20)]
    test = range(20, 30)
    return [
        *train,
        *(result("none", i, i < 24) for i in test),  # 4/10
        *(result("spl", i, i < 27) for i in test),  # 7/10
    ]


def test_spl_curve_on_a_train_and_test_split() -> None:
    curve = spl_curve(spl_run())
    assert curve is not None
    low, high = difference_interval(4, 10, 7, 10)
    assert curve == {
        "train_items": 20,
        "train_correct": 15,
        "train_accuracy": 0.75,
        "train_curve": [[n, curve["train_curve"][i][1]] for i, n in enumerate(range(2, 21, 2))],
        "test_items": 10,
        "baseline": {
            "approach": "none",
            "items": 10,
            "correct": 4,
            "accuracy": 0.4,
            "ci_low": wilson(4, 10)[0],
            "ci_high": wilson(4, 10)[1],
        },
        "spl": {
            "approach": "spl",
            "items": 10,
            "correct": 7,
            "accuracy": 0.7,
            "ci_low": wilson(7, 10)[0],
            "ci_high": wilson(7, 10)[1],
        },
        "difference": pytest.approx(0.3),
        "difference_ci_low": low,
        "difference_ci_high": high,
    }
    # Items 0, 4, 8, ... are wrong: cumulative accuracy after 2, 4 and 20 items.
    assert curve["train_curve"][0][1] == 0.5
    assert curve["train_curve"][1][1] == 0.75
    assert curve["train_curve"][-1] == [20, 0.75]
    assert low < 0.3 < high


def test_spl_curve_only_for_spl_train_runs() -> None:
    run = spl_run()
    assert spl_curve([r for r in run if r.phase == "eval"]) is None  # no training
    assert spl_curve([r for r in run if r.approach == "spl"]) is None  # no baseline
    assert spl_curve(hand_made()) is None  # trained, but no spl on the test split


# --- report files ----------------------------------------------------------------------------

META = {"suite": "arith", "model": "smollm2-135m", "items": 4, "seed": 0, "date": "2025-01-02"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_write_report_files_hold_the_numbers(tmp_path: Path) -> None:
    results = hand_made()
    summaries = summarize(results)
    out = tmp_path / "results" / "run"
    paths = write_report(out, summaries, META, results)

    names = ["summary.md", "summary.json", "accuracy_vs_tokens.png", "latency.png"]
    assert paths == [out / name for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files left

    body = json.loads((out / "summary.json").read_text())
    assert body["meta"] == META
    assert body["summaries"] == [asdict(s) for s in summaries]
    assert body["summaries"][0]["accuracy"] == 0.5
    assert "spl_curve" not in body

    md = (out / "summary.md").read_text()
    assert md.startswith("# Ponder bench: arith\n")
    for line in (
        "- Suite: arith",
        "- Model: smollm2-135m",
        "- Items: 4",
        "- Seed: 0",
        "- Date: 2025-01-02",
        "- Server: in-process",
    ):
        assert f"\n{line}\n" in md
    assert "| none | 50.0% [15.0, 85.0] | 105.0 | 1.00 | 3.00 | 2.50 | 5.55 | 1 |" in md
    assert "| sc | 100.0% [34.2, 100.0] | 350.0 | 5.00 | 3.50 | 3.50 | 3.95 | 0 |" in md
    assert "SPL" not in md

    for name in names[2:]:
        path = out / name
        assert path.stat().st_size > 10_000
        assert png_size(path) == (700, 500)


def test_markdown_header_for_an_upstream_and_unknown_backend_calls() -> None:
    results = [result("none", i, i == 0, calls=None, latency=0.5) for i in range(2)]
    meta = {**META, "base_url": "http://upstream:8000/v1", "approaches": ["none"], "path": None}
    md = render_markdown(summarize(results), meta)
    assert "\n- Server: http://upstream:8000/v1\n" in md
    assert "\n- approaches: none\n" in md and "path" not in md
    assert "| none | 50.0% [9.5, 90.5] | 15.0 | - | 0.50 | 0.50 | 0.50 | 0 |" in md


def test_the_header_says_which_commits_answered_and_how_many_results_each(
    tmp_path: Path,
) -> None:
    earlier = [replace(result("none", i, True), code="78409c8") for i in range(3)]
    later = [replace(result("sc", i, True), code="be3b6f3+changes") for i in range(2)]
    results = [*earlier, result("none", 9, False), *later]  # one result from an older run
    assert code_versions(results) == "78409c8 (3), be3b6f3+changes (2)"
    assert code_versions(hand_made()) is None
    write_report(tmp_path, summarize(results), META, results)
    md = (tmp_path / "summary.md").read_text()
    assert "\n- Code (commit, items): 78409c8 (3), be3b6f3+changes (2)\n" in md
    meta = json.loads((tmp_path / "summary.json").read_text())["meta"]
    assert meta == {**META, "code": "78409c8 (3), be3b6f3+changes (2)"}


def test_write_report_includes_the_spl_curve_and_fills_the_date(tmp_path: Path) -> None:
    results = spl_run()
    meta = {"suite": "gsm8k", "model": "m", "started": "2025-03-04T05:06:07+00:00"}
    write_report(tmp_path, summarize(results), meta, results)
    body = json.loads((tmp_path / "summary.json").read_text())
    assert body["spl_curve"] == json.loads(json.dumps(spl_curve(results)))
    assert body["meta"]["date"] == "2025-03-04T05:06:07+00:00"
    assert body["meta"]["items"] == 10
    assert [s["approach"] for s in body["summaries"]] == ["none", "spl"]
    md = (tmp_path / "summary.md").read_text()
    assert "## SPL learning curve" in md
    assert "- Trained on 20 items (accuracy while learning 75.0%)." in md
    assert "- none: 40.0% [16.8, 68.7]" in md and "- spl: 70.0% [39.7, 89.2]" in md
    low, high = difference_interval(4, 10, 7, 10)
    assert f"- Difference: +30.0 points [{low * 100:+.1f}, {high * 100:+.1f}]" in md


def test_write_report_replaces_earlier_files(tmp_path: Path) -> None:
    first = [result("none", 0, False)]
    write_report(tmp_path, summarize(first), META, first)
    again = [replace(first[0], correct=True)]
    write_report(tmp_path, summarize(again), META, again)
    assert json.loads((tmp_path / "summary.json").read_text())["summaries"][0]["correct"] == 1
    assert len(list(tmp_path.iterdir())) == 4


def test_each_approach_against_none_on_the_items_both_answered() -> None:
    results = [
        *(result("none", i, i < 6) for i in range(10)),
        # sc: right on 0-3 (as none), wrong on 4-5 (none right), right on 6-8 (none wrong)
        *(result("sc", i, i < 4 or 6 <= i < 9) for i in range(10)),
        # re2 measured on 4 of the items only: right on 2-3, wrong on 4-5 (none right on all 4)
        *(result("re2", i, i < 4) for i in range(2, 6)),
    ]
    sc, re2 = against_baseline(results)
    assert {k: sc[k] for k in ("approach", "items", "only_baseline", "only_approach")} == {
        "approach": "sc",
        "items": 10,
        "only_baseline": 2,
        "only_approach": 3,
    }
    assert (sc["baseline_accuracy"], sc["accuracy"], sc["difference"]) == pytest.approx(
        (0.6, 0.7, 0.1)
    )
    assert (sc["ci_low"], sc["ci_high"]) == pytest.approx(paired_difference_interval(4, 2, 3, 1))
    assert sc["verdict"] == "cannot be told apart"
    assert (re2["items"], re2["baseline_accuracy"], re2["difference"]) == (4, 1.0, -0.5)
    text = render_markdown(summarize(results), {"suite": "arith"}, None, [sc, re2])
    assert "## Against none, on the same items" in text
    assert "| sc | 10 | 60.0% | 70.0% | +10.0 [" in text
    assert against_baseline([r for r in results if r.approach != "none"]) == []


def test_verdicts() -> None:
    many = [
        *(result("none", i, False) for i in range(40)),
        *(result("good", i, i < 20) for i in range(40)),
        *(result("bad", i, False) for i in range(40)),
    ]
    compared = {c["approach"]: c for c in against_baseline(many)}
    assert compared["good"]["verdict"] == "helps"
    assert compared["bad"]["verdict"] == "cannot be told apart"
    flipped = [replace(r, correct=not r.correct) for r in many]
    assert {c["approach"]: c["verdict"] for c in against_baseline(flipped)}["good"] == "hurts"
