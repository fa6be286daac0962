"""The embedded engine's token log-probabilities, on logits chosen by hand."""

from __future__ import annotations

import math

import numpy as np

from ponder.backends.llamacpp.logprobs import log_softmax, token_entry

PIECES = {0: b"a", 1: b"b", 2: b"\xe2\x82", 3: b"d"}


def test_log_softmax_is_a_distribution_even_for_huge_logits() -> None:
    logprobs = log_softmax(np.array([1000.0, 1000.0, -1000.0], dtype=np.float32))
    assert logprobs[0] == logprobs[1] == math.log(0.5)
    assert math.isclose(float(np.exp(logprobs).sum()), 1.0)


def test_an_entry_has_the_drawn_token_and_the_most_likely_first() -> None:
    logprobs = log_softmax(np.array([0.0, 2.0, 1.0, 2.0], dtype=np.float32))
    entry = token_entry(logprobs, 0, 3, PIECES.__getitem__)
    assert entry["token"] == "a" and entry["bytes"] == [97]
    assert entry["logprob"] == float(logprobs[0])
    # ties (tokens 1 and 3) by id; a partial UTF-8 piece is shown replaced, its bytes kept
    assert [(t["token"], t["bytes"]) for t in entry["top_logprobs"]] == [
        ("b", [98]),
        ("d", [100]),
        ("\ufffd", [0xE2, 0x82]),
    ]
    assert [t["logprob"] for t in entry["top_logprobs"]] == [
        float(logprobs[1]),
        float(logprobs[3]),
        float(logprobs[2]),
    ]


def test_no_alternatives_asked_for_none_given_and_more_than_the_vocabulary_is_all() -> None:
    logprobs = log_softmax(np.array([0.0, 1.0], dtype=np.float32))
    assert token_entry(logprobs, 1, 0, PIECES.__getitem__)["top_logprobs"] == []
    every = token_entry(logprobs, 1, 20, PIECES.__getitem__)["top_logprobs"]
    assert [t["token"] for t in every] == ["b", "a"]
