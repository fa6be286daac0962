"""The statistics a bench report needs: the intervals (`ponder.intervals`) and percentiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ponder.intervals import Z95, difference_interval, paired_difference_interval, wilson

__all__ = ["Z95", "difference_interval", "paired_difference_interval", "percentile", "wilson"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between the closest ranks (numpy's
    default). No values: 0.0."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    if not values:
        return 0.0
    return float(np.percentile(values, q))
