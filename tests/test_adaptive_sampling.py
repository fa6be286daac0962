"""The entropix-style adaptive rule of the embedded engine: entropy and varentropy of a
next-token distribution, the action they choose, how each action draws, and the request field
that asks for it."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from ponder.backends.base import ADAPTIVE_SAMPLING
from ponder.backends.llamacpp.adaptive import (
    AdaptiveSampler,
    AdaptiveSettings,
    Draw,
    decide,
    draw,
    draw_for,
    entropy_varentropy,
)
from ponder.backends.llamacpp.backend import adaptive_settings
from ponder.backends.llamacpp.logprobs import log_softmax
from ponder.errors import InvalidRequest
from ponder.types import Sampling

DEFAULTS = AdaptiveSettings()


def logits_of(probs: list[float]) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


def direct(probs: list[float]) -> tuple[float, float]:
    """Entropy and varentropy computed term by term."""
    h = -sum(p * math.log(p) for p in probs if p > 0)
    v = sum(p * (math.log(p) + h) ** 2 for p in probs if p > 0)
    return h, v


# one sure token; many equal ones; one likely token above a long flat tail; two likely tokens
# and a heavy flat tail
PEAKED = [0.999] + [0.001 / 99] * 99
FLAT = [1 / 1000] * 1000
BRANCHY = [0.95] + [0.05 / 10000] * 10000
LOST = [0.25, 0.25] + [0.5 / 10000] * 10000


@pytest.mark.parametrize("probs", [PEAKED, FLAT, BRANCHY, LOST, [0.3, 0.7], [0.2, 0.5, 0.3]])
def test_entropy_and_varentropy_match_a_direct_computation(probs: list[float]) -> None:
    h, v = entropy_varentropy(log_softmax(logits_of(probs)))
    expected_h, expected_v = direct(probs)
    assert h == pytest.approx(expected_h, rel=1e-9, abs=1e-12)
    assert v == pytest.approx(expected_v, rel=1e-9, abs=1e-12)


def test_closed_forms() -> None:
    h, v = entropy_varentropy(log_softmax(np.zeros(1000)))
    assert h == pytest.approx(math.log(1000)) and v == pytest.approx(0, abs=1e-12)
    p = 0.3  # two outcomes: V = p (1 - p) ln(p / (1 - p))^2
    h, v = entropy_varentropy(log_softmax(logits_of([p, 1 - p])))
    assert v == pytest.approx(p * (1 - p) * math.log(p / (1 - p)) ** 2)


def test_forbidden_tokens_count_for_nothing() -> None:
    logits = np.array([0.0, 0.0, -np.inf, -np.inf])
    h, v = entropy_varentropy(log_softmax(logits))
    assert h == pytest.approx(math.log(2)) and v == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize(
    ("probs", "action"),
    [(PEAKED, "argmax"), (FLAT, "explore"), (BRANCHY, "branch"), (LOST, "resample")],
)
def test_the_shape_of_the_distribution_chooses_the_action(probs: list[float], action: str) -> None:
    h, v = entropy_varentropy(log_softmax(logits_of(probs)))
    assert decide(h, v, DEFAULTS) == action


def test_thresholds_are_inclusive_and_can_force_one_action() -> None:
    s = AdaptiveSettings(entropy_threshold=1.0, varentropy_threshold=2.0)
    assert decide(1.0, 1.99, s) == "explore"
    assert decide(0.99, 2.0, s) == "branch"
    assert decide(1.0, 2.0, s) == "resample"
    everything_sure = AdaptiveSettings(entropy_threshold=20, varentropy_threshold=100)
    nothing_sure = AdaptiveSettings(entropy_threshold=0, varentropy_threshold=0)
    for probs in (PEAKED, FLAT, BRANCHY, LOST):
        h, v = entropy_varentropy(log_softmax(logits_of(probs)))
        assert decide(h, v, everything_sure) == "argmax"
        assert decide(h, v, nothing_sure) == "resample"


def test_each_action_draws_as_configured() -> None:
    s = AdaptiveSettings(
        explore_temperature=1.1,
        branch_top_k=3,
        branch_temperature=0.6,
        resample_temperature=1.4,
        resample_top_p=0.8,
    )
    assert draw_for("argmax", s) == Draw(0.0)
    assert draw_for("explore", s) == Draw(1.1)
    assert draw_for("branch", s) == Draw(0.6, top_k=3)
    assert draw_for("resample", s) == Draw(1.4, top_p=0.8)


def draws(probs: list[float], how: Draw, times: int = 2000, seed: int = 0) -> Counter[int]:
    rng = np.random.default_rng(seed)
    logprobs = log_softmax(logits_of(probs))
    return Counter(draw(logprobs, how, rng) for _ in range(times))


def test_argmax_takes_the_most_likely_token() -> None:
    assert draws([0.1, 0.2, 0.6, 0.1], Draw(0.0), times=5) == {2: 5}


def test_top_k_keeps_only_the_k_most_likely() -> None:
    seen = draws([0.05, 0.4, 0.05, 0.3, 0.2], Draw(1.0, top_k=2))
    assert set(seen) == {1, 3}
    assert seen[1] / seen[3] == pytest.approx(4 / 3, rel=0.15)


def test_top_p_keeps_the_smallest_head_that_reaches_p() -> None:
    # cumulative 0.5, 0.8, 0.95, 1.0: a 0.7 cut keeps the first two, 0.8 keeps them exactly
    assert set(draws([0.5, 0.3, 0.15, 0.05], Draw(1.0, top_p=0.7))) == {0, 1}
    assert set(draws([0.5, 0.3, 0.15, 0.05], Draw(1.0, top_p=0.96))) == {0, 1, 2, 3}


def test_temperature_flattens_and_sharpens() -> None:
    probs = [0.7, 0.3]
    cold = draws(probs, Draw(0.3))[1]
    warm = draws(probs, Draw(1.0))[1]
    hot = draws(probs, Draw(3.0))[1]
    assert cold < warm < hot
    assert warm / 2000 == pytest.approx(0.3, abs=0.04)


def test_a_forbidden_token_is_never_drawn() -> None:
    logprobs = log_softmax(np.array([0.0, -np.inf, 0.0, -np.inf]))
    rng = np.random.default_rng(1)
    assert {draw(logprobs, Draw(2.0), rng) for _ in range(200)} == {0, 2}
    assert {draw(logprobs, Draw(2.0, top_k=3), rng) for _ in range(200)} == {0, 2}


def test_the_sampler_is_reproducible_by_seed_and_counts_actions() -> None:
    rows = [logits_of(p) for p in (PEAKED, FLAT, BRANCHY, LOST, FLAT, PEAKED)]

    def run(seed: int) -> tuple[list[int], dict[str, int]]:
        sampler = AdaptiveSampler(DEFAULTS, seed)
        tokens = [sampler.choose(row)[0] for row in rows]
        return tokens, sampler.counts

    tokens, counts = run(5)
    assert run(5) == (tokens, counts)
    assert counts == {"argmax": 2, "explore": 2, "branch": 1, "resample": 1}
    assert tokens[0] == 0 and tokens[-1] == 0
    assert any(run(seed)[0] != tokens for seed in range(6, 12))


# ---- the request field -------------------------------------------------------------------


def test_the_field_is_read_with_defaults() -> None:
    assert adaptive_settings(Sampling()) is None
    assert adaptive_settings(Sampling(extra={ADAPTIVE_SAMPLING: {}})) == DEFAULTS
    got = adaptive_settings(
        Sampling(extra={ADAPTIVE_SAMPLING: {"entropy_threshold": 2, "branch_top_k": 3}})
    )
    assert got == AdaptiveSettings(entropy_threshold=2.0, branch_top_k=3)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("yes", "ponder_adaptive_sampling must be an object"),
        ({"temperature": 1}, "ponder_adaptive_sampling.temperature: unknown setting"),
        ({"entropy_threshold": True}, "entropy_threshold: Value error, must be a number"),
        ({"entropy_threshold": "1"}, "entropy_threshold: Value error, must be a number"),
        ({"entropy_threshold": -1}, "entropy_threshold: Input should be greater than or equal"),
        ({"branch_top_k": 2.5}, "branch_top_k: Input should be a valid integer"),
        ({"resample_top_p": 0}, "resample_top_p: Input should be greater than 0"),
        ({"resample_top_p": 1.5}, "resample_top_p: Input should be less than or equal to 1"),
    ],
)
def test_a_bad_field_is_a_client_error(value: object, says: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(says)) as info:
        adaptive_settings(Sampling(extra={ADAPTIVE_SAMPLING: value}))
    assert (info.value.param or "").startswith(ADAPTIVE_SAMPLING)
