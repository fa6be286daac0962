"""`ponder.fastjson`: the hot path's JSON, written by orjson, with the standard library for
what orjson refuses."""

from __future__ import annotations

import json
import math

import httpx

from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.fastjson import FastJSONResponse, dumps
from ponder.testing import HandlerUpstream
from ponder.types import Message, Sampling


def test_dumps_is_compact_utf8_json() -> None:
    value = {"text": "déjà vu ✓", "n": [1, 2.5, None, True], "nested": {"a": "b"}}
    raw = dumps(value)
    assert json.loads(raw) == value
    assert "déjà vu ✓".encode() in raw and b", " not in raw and b": " not in raw


def test_integers_beyond_64_bits_are_written_all_the_same() -> None:
    value = {"seed": 2**70, "text": "é"}
    assert json.loads(dumps(value)) == value


def test_a_float_that_is_not_finite_becomes_null_in_an_answer() -> None:
    assert json.loads(FastJSONResponse({"score": math.nan}).body) == {"score": None}


async def test_a_clients_huge_extra_field_reaches_the_upstream_intact() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        answer = {"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}
        return httpx.Response(200, json={"choices": [answer]})

    backend = OpenAICompatBackend("http://up/v1", http=HandlerUpstream(handler))
    sampling = Sampling(extra={"seed": 2**70})
    (choice,) = await backend.complete("m", [Message("user", "hi")], sampling)
    assert choice.content == "ok" and seen[0]["seed"] == 2**70
