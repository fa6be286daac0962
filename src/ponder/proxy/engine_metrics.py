"""Metrics of the embedded engine, read from its counters at scrape time.

`ponder_embedded_batch_sequences` is a histogram of how many sequences each decode step
advanced together: the proof that samples and concurrent requests share steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the engine module loads llama.cpp
    from ponder.backends.llamacpp.jobs import EngineStats


class EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        if s is None:
            return
        buckets, running = [], 0
        for k, steps in enumerate(s.batch_sequences):
            running += steps
            if k and (k & (k - 1) == 0 or k == s.sequences):  # 1, 2, 4, 8, ... and the max
                buckets.append((str(k), float(running)))
        buckets.append(("+Inf", float(running)))
        total = float(sum(k * steps for k, steps in enumerate(s.batch_sequences)))
        yield HistogramMetricFamily(
            "ponder_embedded_batch_sequences",
            "Sequences advanced together by one decode step of the embedded engine",
            buckets=buckets,
            sum_value=total,
        )
        yield _gauge(
            "ponder_embedded_sequences", "Sequences the engine decodes at once", s.sequences
        )
        yield _gauge("ponder_embedded_free_sequences", "Sequences free now", s.free_sequences)
        yield _gauge(
            "ponder_embedded_waiting_sequences", "Sequences waiting for a free one", s.waiting
        )
        yield _gauge(
            "ponder_embedded_kv_cells_live",
            "KV cache positions running sequences hold",
            s.kv_cells_live,
        )
        yield _gauge(
            "ponder_embedded_kv_cells_cached",
            "KV cache positions kept from finished sequences for prefix reuse",
            s.kv_cells_cached,
        )
        yield _counter("ponder_embedded_decoded_tokens", "Tokens generated", s.decoded_tokens)
        yield _counter("ponder_embedded_prompt_tokens", "Prompt tokens evaluated", s.prompt_tokens)
        yield _counter(
            "ponder_embedded_prompt_tokens_reused",
            "Prompt tokens taken from the KV cache instead of evaluated",
            s.prompt_tokens_reused,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
