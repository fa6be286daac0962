"""Confidence intervals for accuracies and success rates, and for differences between two of
them: the bench reports them, and SPL decides with them whether a strategy beats its baseline.

Single proportions use the Wilson score interval: unlike the normal approximation it stays
inside [0, 1] and is sensible for small samples and rates near 0 or 1. Differences use
Newcombe's methods, which combine two Wilson intervals.
"""

from __future__ import annotations

import math
from statistics import NormalDist

Z95 = 1.96
"""The normal quantile of a two-sided 95% interval."""


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of `correct` successes out of `n`.

    With no items nothing is known, so the interval is the whole range (0.0, 1.0)."""
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    correct_a: int, n_a: int, correct_b: int, n_b: int, z: float = Z95
) -> tuple[float, float]:
    """A 95% interval of accuracy(b) - accuracy(a), by Newcombe's method from the two Wilson
    intervals. It treats the two samples as independent, which for two approaches run on the
    same items makes it somewhat wider (more cautious) than a paired interval."""
    p_a = correct_a / n_a if n_a else 0.0
    p_b = correct_b / n_b if n_b else 0.0
    low_a, high_a = wilson(correct_a, n_a, z)
    low_b, high_b = wilson(correct_b, n_b, z)
    diff = p_b - p_a
    low = diff - math.sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2)
    high = diff + math.sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2)
    return max(-1.0, low), min(1.0, high)


def paired_difference_interval(
    both: int, only_a: int, only_b: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """A 95% interval of accuracy(b) - accuracy(a) when a and b answered the same items:
    Newcombe's method 10 (1998), the two Wilson intervals combined with the correlation of
    the paired outcomes. `both`: items both got right; `only_a`, `only_b`: items only one got
    right; `neither`. Narrower than `difference_interval` when the two agree on most items."""
    n = both + only_a + only_b + neither
    if n == 0:
        return -1.0, 1.0
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = wilson(both + only_a, n, z)
    low_b, high_b = wilson(both + only_b, n, z)
    product = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    if product == 0:
        phi = 0.0
    else:  # the continuity-corrected correlation of Newcombe's method 10
        phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(product)
    diff = p_b - p_a
    d_low = (p_b - low_b) ** 2 - 2 * phi * (p_b - low_b) * (high_a - p_a) + (high_a - p_a) ** 2
    d_high = (high_b - p_b) ** 2 - 2 * phi * (high_b - p_b) * (p_a - low_a) + (p_a - low_a) ** 2
    return max(-1.0, diff - math.sqrt(max(d_low, 0.0))), min(
        1.0, diff + math.sqrt(max(d_high, 0.0))
    )


def z_for(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence` (0.95 -> 1.96)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)
