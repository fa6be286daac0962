"""Whether a strategy earns its place: its success rate against its problem type's baseline.

The baseline is the control arm: learning requests of the type answered with no strategies
(`Lifecycle.explore` of them). A strategy is compared with it by the interval of (strategy
rate - baseline rate), Newcombe's method at `Lifecycle.confidence`:

- promoted (a candidate, with at least `promote_after` successes) when the whole interval is
  above 0: it does better than no strategy;
- retired (after at least `retire_after` attempts) when the whole interval is below 0: it does
  worse than no strategy;
- a candidate not promoted after `2 * retire_after` attempts ends its trial (retired), so that
  one that cannot be told apart from the baseline does not hold a candidate slot for ever;
- otherwise kept.

Until the type has `min_baseline` control outcomes nothing is decided (candidates keep their
trials). With the control arm off (`explore` 0) the fixed rates decide, as they did before
there was a baseline: promotion at `promote_rate`, retirement under `retire_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ponder.intervals import difference_interval, z_for
from ponder.spl_store.records import Baseline, Lifecycle

Verdict = Literal["better", "worse", "unclear", "no baseline"]
Decision = Literal["promote", "retire", "keep"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """A strategy against its baseline: the difference of the rates and its interval (None
    without a usable baseline or without attempts), and what the interval says."""

    lift: float | None
    low: float | None
    high: float | None
    verdict: Verdict


NO_BASELINE = Comparison(None, None, None, "no baseline")


def measured(baseline: Baseline | None, rules: Lifecycle) -> Baseline | None:
    """The baseline when it has the control outcomes (`min_baseline`) to judge by, else None."""
    return baseline if baseline is not None and baseline.attempts >= rules.min_baseline else None


def compare(
    successes: int, attempts: int, baseline: Baseline | None, rules: Lifecycle
) -> Comparison:
    """The strategy's rate minus the baseline's, with its interval at `rules.confidence`."""
    baseline = measured(baseline, rules)
    if baseline is None or attempts == 0:
        return NO_BASELINE
    low, high = difference_interval(
        baseline.successes, baseline.attempts, successes, attempts, z_for(rules.confidence)
    )
    lift = successes / attempts - baseline.successes / baseline.attempts
    verdict: Verdict = "better" if low > 0 else "worse" if high < 0 else "unclear"
    return Comparison(lift, low, high, verdict)


def decide(
    status: str,
    successes: int,
    attempts: int,
    baseline: Baseline | None,
    rules: Lifecycle,
    review: bool = False,
) -> tuple[Decision, str, Comparison]:
    """What happens to a strategy after its counters changed, why, and the comparison that
    said so."""
    comparison = compare(successes, attempts, baseline, rules)
    if status == "retired":
        return "keep", "", comparison
    candidate = status == "candidate"
    if comparison.verdict != "no baseline":
        if attempts >= rules.retire_after and comparison.verdict == "worse":
            return "retire", "worse than the baseline", comparison
        promotable = candidate and not review and successes >= rules.promote_after
        if promotable and comparison.verdict == "better":
            return "promote", "better than the baseline", comparison
        if candidate and attempts >= 2 * rules.retire_after:
            return "retire", "trial ended: not shown better than the baseline", comparison
        return "keep", "", comparison
    if rules.explore > 0:
        return "keep", "", comparison  # the baseline is still being measured
    rate = successes / attempts if attempts else 0.0
    if attempts >= rules.retire_after and rate < rules.retire_rate:
        return "retire", "low success rate", comparison
    if candidate and not review and successes >= rules.promote_after and rate >= rules.promote_rate:
        return "promote", "success rate", comparison
    return "keep", "", comparison
