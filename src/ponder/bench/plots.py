"""The bench report's two plots, drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ponder.bench.types import Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _figure() -> tuple[Figure, Axes]:
    # Imported when a plot is drawn: matplotlib is slow to import, and most runs of the CLI draw
    # none.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def accuracy(path: Path, summaries: list[Summary], title: str) -> None:
    """Accuracy (with its 95% interval) against mean tokens: what each approach costs."""
    figure, axes = _figure()
    for s in summaries:
        y = s.accuracy * 100
        errors = [[y - s.ci_low * 100], [s.ci_high * 100 - y]]
        axes.errorbar([s.mean_tokens], [y], yerr=errors, fmt="o", capsize=4)
        axes.annotate(s.approach, (s.mean_tokens, y), textcoords="offset points", xytext=(6, 6))
    axes.set_xlabel("Mean tokens per item")
    axes.set_ylabel("Accuracy (%), 95% CI")
    axes.set_ylim(-5, 108)  # room for a point and its label at 0% or 100%
    axes.set_title(f"Accuracy vs tokens — {title}" if title else "Accuracy vs tokens")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")


def latency(path: Path, groups: list[tuple[str, list[float]]], title: str) -> None:
    """The spread of per-item latency for each approach, as box plots."""
    figure, axes = _figure()
    if groups:
        axes.boxplot([values for _, values in groups])
        axes.set_xticks(range(1, len(groups) + 1), labels=[name for name, _ in groups])
    axes.set_xlabel("Approach")
    axes.set_ylabel("Latency per item (s)")
    axes.set_title(f"Latency — {title}" if title else "Latency")
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
