"""`deepconf`: a vote over traces filtered and weighed by the model's own token confidence, and
online, traces cut while they are written once their confidence falls."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ponder.backends.base import Capabilities
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.proxy import create_app
from ponder.strategies.confidence import (
    group_confidences,
    majority_posterior,
    token_confidence,
    trace_confidence,
    weighted_vote,
)
from ponder.strategies.deepconf import kept_threshold
from ponder.testing import Call, HandlerUpstream, Reply, ScriptedBackend
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Delta, Message, Sampling, Usage
from tests.conftest import (
    MODEL,
    asgi_client,
    assert_error,
    chat,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

DEEPCONF = f"deepconf-{MODEL}"
LOGPROBS = Capabilities(logprobs=True)
NATIVE = Capabilities(logprobs=True, native_n=True)
TOP = 5

# ---- the measures on hand-made log-probabilities -------------------------------------------


def test_token_confidence_is_minus_the_mean_of_the_top_k_log_probabilities() -> None:
    entry = {
        "token": "4",
        "logprob": -0.1,
        "top_logprobs": [
            {"token": "4", "logprob": -0.1},
            {"token": "5", "logprob": -2.3},
            {"token": "3", "logprob": -3.0},
            {"token": "6", "logprob": -4.5},
            {"token": "7", "logprob": -5.1},
        ],
    }
    assert token_confidence(entry, 5) == pytest.approx(3.0)
    assert token_confidence(entry, 2) == pytest.approx(1.2)  # (0.1 + 2.3) / 2
    assert token_confidence(entry, 20) == pytest.approx(3.0)  # the alternatives there are
    # a flat distribution over five tokens: each -ln 5, the confidence ln 5
    flat = {"token": "a", "logprob": -math.log(5), "top_logprobs": []}
    flat["top_logprobs"] = [{"token": t, "logprob": -math.log(5)} for t in "abcde"]
    assert token_confidence(flat, 5) == pytest.approx(math.log(5))
    # without alternatives, the token's own log-probability
    assert token_confidence({"token": "a", "logprob": -0.7}, 5) == pytest.approx(0.7)


def test_group_tail_and_mean_confidence() -> None:
    assert group_confidences([1, 2, 3, 4, 5], 2) == [1.5, 2.5, 3.5, 4.5]
    assert group_confidences([1, 2, 3, 4, 5], 3) == [2, 3, 4]
    assert group_confidences([1, 2, 3, 4, 5], 10) == [3]  # shorter than a window: one group
    assert group_confidences([], 3) == []
    measured = trace_confidence([4, 4, 1, 1, 4, 4, 2], window=2, tail=3)
    assert measured.tokens == 7
    assert measured.mean == pytest.approx(20 / 7)
    assert measured.lowest_group == 1  # the dip in the middle
    assert measured.tail == pytest.approx(10 / 3)  # 4, 4, 2
    assert (measured.of("lowest_group"), measured.of("tail"), measured.of("mean")) == (
        measured.lowest_group,
        measured.tail,
        measured.mean,
    )
    empty = trace_confidence([], window=2, tail=3)
    assert (empty.tokens, empty.mean, empty.lowest_group, empty.tail) == (0, 0, 0, 0)


def test_the_weighted_vote_and_the_kept_share() -> None:
    vote = weighted_vote(["41", "41", "41", "42", None], [1.0, 1.0, 1.0, 5.0, 9.0])
    assert (vote.winner, vote.weights, vote.counts) == (
        "42",
        {"41": 3.0, "42": 5.0},
        {"41": 3, "42": 1},
    )
    assert vote.total == 8.0
    # equal weight: more traces win, then the answer seen first
    assert weighted_vote(["41", "42", "42"], [2.0, 1.0, 1.0]).winner == "42"
    assert weighted_vote(["41", "42"], [1.0, 1.0]).winner == "41"
    assert weighted_vote([None, None], [1.0, 2.0]).winner is None
    scores = [3.0, 1.0, 2.0, 5.0, 4.0, 0.5, 2.5, 1.5, 3.5, 4.5]
    assert kept_threshold(scores, 0.9) == 1.0  # the 9 most confident: all but 0.5
    assert kept_threshold(scores, 0.1) == 5.0
    assert kept_threshold(scores, 0.3) == 4.0
    assert kept_threshold(scores, 0.05) == 5.0  # at least one
    assert kept_threshold([2.0, 1.0, 3.0], 0.7) == 2.0  # floor(2.1): two of three
    assert kept_threshold([], 0.5) == -math.inf


# ---- scripted traces ------------------------------------------------------------------------


def tokens_of(text: str) -> list[str]:
    """`text` in tokens as the usage counter's tokenizer cuts it (words with their leading
    space; a number apart from the space before it), checked against the counter, so that a
    trace cut after k tokens cost k tokens."""
    pieces = re.findall(r" ?[A-Za-z]+| (?=\d)|\d{1,3}|\S", text)
    for k in range(1, len(pieces) + 1):
        assert count_tokens("".join(pieces[:k])) == k, text
    return pieces


def entry(token: str, confidence: float) -> dict[str, Any]:
    """A token's logprobs entry whose top-5 mean log-probability is -`confidence`: the drawn
    token at -0.05, the other four sharing the rest."""
    rest = (TOP * confidence - 0.05) / (TOP - 1)
    top = [{"token": token, "logprob": -0.05}] + [
        {"token": f"alt{j}", "logprob": -rest} for j in range(TOP - 1)
    ]
    return {"token": token, "logprob": -0.05, "bytes": list(token.encode()), "top_logprobs": top}


def trace(text: str, confidences: float | Sequence[float], **more: Any) -> Completion:
    """A reply whose tokens had `confidences` (one for all, or one per token)."""
    pieces = tokens_of(text)
    each = [confidences] * len(pieces) if isinstance(confidences, float) else confidences
    assert len(each) == len(pieces)
    content = [entry(p, c) for p, c in zip(pieces, each, strict=True)]
    return Completion(text, logprobs={"content": content}, **more)


def answer(value: int, words: int = 0) -> str:
    """A short working ending in `value`, `words` words longer than the shortest."""
    return "so" + " we" * words + f" get {value} and the answer is {value}"


@dataclass
class TokenStreams(ScriptedBackend):
    """Streams each reply a token at a time, each delta with its token's logprobs entry (as an
    OpenAI-compatible server streams with `logprobs: true`), and keeps how many tokens each
    stream sent before it ended or was closed."""

    sent: list[int] = field(default_factory=list)

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        call = Call(model, tuple(messages), sampling, n, stream=True)
        self.sent.append(0)
        mine = len(self.sent) - 1
        async with self._in_flight(call):
            (choice,) = [await self._reply(call, i) for i in range(n)]
            for item in (choice.logprobs or {})["content"]:
                self.sent[mine] += 1
                yield Delta(content=item["token"], logprobs={"content": [item]})
                await asyncio.sleep(0)
            yield Delta(
                finish_reason=choice.finish_reason,
                completion_tokens=choice.usage.completion_tokens,
            )
            yield Delta(usage=choice.usage)


def scripted_traces(
    warmup: Sequence[Reply], streamed: Sequence[Reply] = (), **kwargs: Any
) -> TokenStreams:
    """A backend answering its complete() calls from `warmup` and its streams from
    `streamed`, in order."""
    warm, more = iter(warmup), iter(streamed)

    def reply(call: Call, index: int) -> Reply:
        return next(more) if call.stream else next(warm)

    kwargs.setdefault("capabilities", NATIVE)
    return TokenStreams(reply, model_ids=(MODEL,), **kwargs)


async def settle() -> None:
    """Let the event loop run the closing of streams the strategy let go."""
    for _ in range(10):
        await asyncio.sleep(0)


# ---- the backend must report log-probabilities --------------------------------------------


async def test_a_backend_without_logprobs_is_a_400_naming_what_is_missing() -> None:
    backend = ScriptedBackend(["never sent"], model_ids=(MODEL,))
    response = await chat(backend, DEEPCONF)
    assert_error(
        response,
        400,
        type="invalid_request_error",
        code="unsupported_parameter",
        param="model",
        message="deepconf needs token log-probabilities, which the backend 'scripted' does "
        "not give",
    )
    assert backend.calls == []


async def test_bad_options_are_400s_naming_the_field() -> None:
    for knob, value in (
        ("mode", "sometimes"),
        ("samples", 0),
        ("samples", 65),
        ("warmup", 0),
        ("keep", 0),
        ("keep", 1.5),
        ("measure", "median"),
        ("top_logprobs", 0),
        ("top_logprobs", 21),
        ("window", 0),
        ("tail", 0),
        ("confidence", 0.3),
        ("confidence", 1),
        ("wave", 0),
        ("temperature", 0),
        ("traces", 8),
    ):
        backend = scripted_traces([])
        response = await chat(backend, DEEPCONF, ponder={"deepconf": {knob: value}})
        assert_error(response, 400, param=f"ponder.deepconf.{knob}")
        assert backend.calls == []


# ---- offline: filter, then a weighted vote -------------------------------------------------


OFFLINE = {"mode": "offline", "samples": 8}


async def test_offline_a_sure_minority_outweighs_an_unsure_majority() -> None:
    # five unsure traces say 41 (weight 5 x 1.0), three sure ones 42 (3 x 2.0): a plain
    # majority says 41, the weighted vote 42
    replies = [trace(answer(41), 1.0) for _ in range(5)] + [
        trace(answer(42, 1), 2.0),
        trace(answer(42, 2), 2.5),
        trace(answer(42, 3), 1.5),
    ]
    backend = scripted_traces(replies)
    response = await chat(
        backend, DEEPCONF, ponder={"deepconf": {**OFFLINE, "keep": 1.0}, "trace": True}
    )
    body = response.json()
    # the most confident trace of the winning answer
    assert body["choices"][0]["message"]["content"] == answer(42, 2)
    assert body["choices"][0]["logprobs"] is None  # the client did not ask for them
    (call,) = backend.calls
    assert (call.n, call.sampling.logprobs, call.sampling.top_logprobs) == (8, True, TOP)
    assert call.sampling.temperature == 0.7
    assert response.headers["x-ponder-backend-calls"] == "1"
    (vote,) = trace_steps(body, "vote")
    assert vote["winner"] == "42"
    assert vote["weights"] == {"41": pytest.approx(5.0), "42": pytest.approx(6.0)}
    assert (vote["tally"], vote["voters"]) == ({"41": 5, "42": 3}, 8)
    texts = [r.content or "" for r in replies]
    assert body["usage"] == usage_for(backend, texts, answer=answer(42, 2))


async def test_offline_the_kept_share_filters_before_the_vote() -> None:
    # 41: five traces at 1.9 (weight 9.5) beat three at 2.0 (6.0) when all vote; keeping the
    # 3 most confident of 8 leaves only the 42s
    replies = [trace(answer(41, i), 1.9) for i in range(5)] + [
        trace(answer(42, i), 2.0) for i in range(3)
    ]
    for keep, winner in ((1.0, "41"), (3 / 8, "42")):
        backend = scripted_traces(list(replies))
        response = await chat(
            backend, DEEPCONF, ponder={"deepconf": {**OFFLINE, "keep": keep}, "trace": True}
        )
        body = response.json()
        (vote,) = trace_steps(body, "vote")
        assert vote["winner"] == winner, keep
        (traces,) = trace_steps(body, "traces")
        assert [t["votes"] for t in traces["traces"]] == (
            [True] * 8 if keep == 1.0 else [False] * 5 + [True] * 3
        )
        assert traces["threshold"] == pytest.approx(1.9 if keep == 1.0 else 2.0)


async def test_offline_the_measure_decides_which_trace_is_trusted() -> None:
    # 41 is sure on the whole but wavers in the middle; 42 is steady: lowest group confidence
    # trusts 42, mean confidence trusts 41
    text41, text42 = answer(41), answer(42)
    dip = [3.0, 3.0, 3.0, 0.2, 0.2, 3.0, 3.0, 3.0, 3.0, 3.0]
    replies = [trace(text41, dip), trace(text42, 2.0)]
    assert len(tokens_of(text41)) == len(dip)
    for measure, winner in (("lowest_group", text42), ("mean", text41), ("tail", text41)):
        backend = scripted_traces(list(replies))
        options = {"mode": "offline", "samples": 2, "keep": 0.5, "window": 2, "tail": 3}
        response = await chat(
            backend, DEEPCONF, ponder={"deepconf": {**options, "measure": measure}}
        )
        assert response.json()["choices"][0]["message"]["content"] == winner, measure


async def test_offline_without_native_n_the_traces_are_concurrent_calls() -> None:
    replies = [trace(answer(42, i), 2.0) for i in range(3)]
    backend = scripted_traces(replies, capabilities=LOGPROBS, latency_s=0.05)
    response = await chat(backend, DEEPCONF, ponder={"deepconf": {"mode": "offline", "samples": 3}})
    assert response.status_code == 200
    assert [c.n for c in backend.calls] == [1, 1, 1]
    assert backend.max_in_flight == 3


async def test_offline_traces_cut_off_or_without_answer_do_not_vote() -> None:
    replies = [
        trace("so we get 7", 9.0, finish_reason="length"),
        trace(answer(42), 1.0),
        Completion("", logprobs={"content": []}),
    ]
    backend = scripted_traces(replies)
    response = await chat(
        backend,
        DEEPCONF,
        max_tokens=4,
        ponder={"deepconf": {**OFFLINE, "samples": 3, "keep": 1.0}, "trace": True},
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == answer(42)
    (vote,) = trace_steps(body, "vote")
    assert (vote["tally"], vote["winner"]) == ({"42": 1}, "42")


async def test_the_client_asking_for_logprobs_gets_them_with_as_many_alternatives() -> None:
    replies = [trace(answer(42), 2.0), trace(answer(42, 1), 3.0)]
    backend = scripted_traces(replies)
    response = await chat(
        backend,
        DEEPCONF,
        logprobs=True,
        top_logprobs=8,
        ponder={"deepconf": {**OFFLINE, "samples": 2}},
    )
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == answer(42, 1)
    assert len(choice["logprobs"]["content"]) == len(tokens_of(answer(42, 1)))
    assert backend.calls[0].sampling.top_logprobs == 8  # the client's, where it asks more


# ---- online: a threshold from the warmup, cuts while streaming, an early stop ---------------

ONLINE = {"mode": "online", "samples": 8, "warmup": 4, "window": 4}


async def test_online_a_settled_warmup_needs_only_the_traces_that_settle_it() -> None:
    # warmup: three at 3.0, one at 2.0, all 42; keep 0.9 of 4 is 3, so the threshold is 3.0
    # and three vote: P = 0.9375 < 0.95, and one more 42 settles it (0.969)
    warmup = [trace(answer(42, i), c) for i, c in enumerate((3.0, 3.0, 2.0, 3.0))]
    streamed = [trace(answer(42, 5), 3.5)]
    backend = scripted_traces(warmup, streamed)
    response = await chat(backend, DEEPCONF, ponder={"deepconf": ONLINE, "trace": True})
    body = response.json()
    assert majority_posterior(3, 0) < 0.95 <= majority_posterior(4, 0)
    assert [(c.n, c.stream) for c in backend.calls] == [(4, False), (1, True)]
    assert all(c.sampling.logprobs and c.sampling.top_logprobs == TOP for c in backend.calls)
    assert body["choices"][0]["message"]["content"] == answer(42, 5)  # the most confident
    (warm,) = trace_steps(body, "warmup")
    assert warm["threshold"] == pytest.approx(3.0)
    assert [t["votes"] for t in warm["traces"]] == [True, True, False, True]
    texts = [t.content or "" for t in (*warmup, *streamed)]
    assert body["usage"] == usage_for(backend, texts, answer=answer(42, 5))
    (saved,) = trace_steps(body, "savings")
    assert (saved["drawn"], saved["cut"], saved["cut_tokens"]) == (5, 0, 0)
    mean = sum(len(tokens_of(t)) for t in texts) / 5
    assert saved["tokens_saved_estimate"] == round(3 * mean)  # three traces never drawn


async def test_online_a_trace_whose_confidence_falls_is_cut_and_does_not_vote() -> None:
    warmup = [trace(answer(42, i), c) for i, c in enumerate((3.0, 3.0, 2.0, 3.0))]
    long = answer(41, 6)
    falling = [3.0] * 4 + [1.0] * (len(tokens_of(long)) - 4)
    # window 4: after token 5 the group is 3, 3, 3, 1 (mean 2.5 < 3.0): cut there
    streamed = [trace(long, falling), trace(answer(42, 5), 3.5)]
    backend = scripted_traces(warmup, streamed)
    response = await chat(
        backend,
        DEEPCONF,
        stream=True,
        stream_options={"include_usage": True},
        ponder={"deepconf": ONLINE, "trace": True},
    )
    await settle()
    assert [(c.n, c.stream) for c in backend.calls] == [(4, False), (1, True), (1, True)]
    assert backend.sent == [5, len(tokens_of(answer(42, 5)))]  # the cut stream sent 5 tokens
    assert backend.cancelled == 1  # and it was closed before its end
    assert streamed_text(response.text) == answer(42, 5)
    reasoning = streamed_text(response.text, "reasoning_content")
    assert "Trace 5: cut after 5 tokens: its confidence fell below the threshold\n" in reasoning
    assert "Trace 6: 42, lowest group confidence 3.500\n" in reasoning
    events = sse_events(response.text)
    cut = "".join(tokens_of(long)[:5])
    texts = [*(t.content or "" for t in warmup), cut, answer(42, 5)]
    assert events[-1]["usage"] == usage_for(backend, texts, answer=answer(42, 5))


async def test_online_the_cut_and_the_early_stop_are_traced_as_tokens_saved() -> None:
    warmup = [trace(answer(42, i), c) for i, c in enumerate((3.0, 3.0, 2.0, 3.0))]
    long = answer(41, 6)
    falling = [3.0] * 4 + [1.0] * (len(tokens_of(long)) - 4)
    streamed = [trace(long, falling), trace(answer(42, 5), 3.5)]
    backend = scripted_traces(warmup, streamed)
    response = await chat(backend, DEEPCONF, ponder={"deepconf": ONLINE, "trace": True})
    body = response.json()
    waves = trace_steps(body, "wave")
    assert [(w["streamed"], [t["cut_at"] for t in w["traces"]]) for w in waves] == [
        (1, [5]),
        (1, [None]),
    ]
    finished = [len(tokens_of(t.content or "")) for t in (*warmup, streamed[1])]
    mean = sum(finished) / len(finished)
    (saved,) = trace_steps(body, "savings")
    assert (saved["drawn"], saved["cut"], saved["cut_tokens"]) == (6, 1, 5)
    assert saved["tokens_saved_estimate"] == round((mean - 5) + 2 * mean)
    (vote,) = trace_steps(body, "vote")
    assert (vote["tally"], vote["drawn"], vote["survivors"]) == ({"42": 4}, 6, 6)


async def test_online_split_votes_stream_several_traces_at_once_up_to_the_most() -> None:
    # 2 to 2 after the warmup: settling needs more than the 4 traces left, so all 4 are
    # streamed at once
    warmup = [trace(answer(41 + i % 2, i), 3.0) for i in range(4)]
    streamed = [trace(answer(42, 4 + i), 3.0 + i / 10) for i in range(4)]
    backend = scripted_traces(warmup, streamed)
    backend.hold()
    task = asyncio.create_task(chat(backend, DEEPCONF, ponder={"deepconf": ONLINE, "trace": True}))
    await backend.wait_for_in_flight(1)
    backend.release()
    backend.hold()
    await backend.wait_for_in_flight(4)
    backend.release()
    response = await task
    body = response.json()
    assert [(c.n, c.stream) for c in backend.calls] == [(4, False)] + [(1, True)] * 4
    assert backend.max_in_flight == 4
    assert body["choices"][0]["message"]["content"] == answer(42, 7)  # the most confident 42
    (vote,) = trace_steps(body, "vote")
    assert (vote["tally"], vote["drawn"]) == ({"41": 2, "42": 6}, 8)
    assert "savings" in {s["step"] for s in body["ponder"]["trace"]}


async def test_online_without_native_n_the_warmup_is_concurrent_calls() -> None:
    warmup = [trace(answer(42, i), 3.0) for i in range(4)]
    backend = scripted_traces(warmup, capabilities=LOGPROBS)
    response = await chat(
        backend, DEEPCONF, ponder={"deepconf": {**ONLINE, "keep": 1.0}, "trace": True}
    )
    assert response.status_code == 200
    # all four vote and agree: settled after the warmup
    assert [(c.n, c.stream) for c in backend.calls] == [(1, False)] * 4


# ---- end to end: the `openai` backend against an upstream that reports logprobs ------------


class LogprobUpstream:
    """An OpenAI-compatible upstream (a handler, as HandlerUpstream takes) whose answers carry
    `logprobs`: plain completions answer from `warmup`, streams from `streamed`, one token
    per chunk. It keeps each request body and how many chunks each stream was read for."""

    def __init__(self, warmup: Sequence[Completion], streamed: Sequence[Completion]) -> None:
        self.warmup = iter(warmup)
        self.streamed = iter(streamed)
        self.bodies: list[dict[str, Any]] = []
        self.read: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        head = {"id": "chatcmpl-up", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            choices = [next(self.warmup) for _ in range(body.get("n", 1))]
            out = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.content},
                    "logprobs": c.logprobs,
                    "finish_reason": "stop",
                }
                for i, c in enumerate(choices)
            ]
            tokens = sum(len((c.logprobs or {})["content"]) for c in choices)
            usage = {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}
            payload = {**head, "object": "chat.completion", "choices": out, "usage": usage}
            return httpx.Response(200, json=payload)
        choice = next(self.streamed)
        self.read.append(0)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=self._events(head, choice, len(self.read) - 1),
        )

    async def _events(
        self, head: dict[str, Any], choice: Completion, mine: int
    ) -> AsyncIterator[bytes]:
        def chunk(choices: list[dict[str, Any]], **more: Any) -> bytes:
            payload = {**head, "object": "chat.completion.chunk", "choices": choices, **more}
            return f"data: {json.dumps(payload)}\n\n".encode()

        entries = (choice.logprobs or {})["content"]
        pieces: Iterator[bytes] = iter(
            [
                *(
                    chunk(
                        [
                            {
                                "index": 0,
                                "delta": {"content": e["token"]},
                                "logprobs": {"content": [e]},
                                "finish_reason": None,
                            }
                        ]
                    )
                    for e in entries
                ),
                chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                chunk(
                    [],
                    usage={
                        "prompt_tokens": 20,
                        "completion_tokens": len(entries),
                        "total_tokens": 20 + len(entries),
                    },
                ),
                b"data: [DONE]\n\n",
            ]
        )
        for piece in pieces:
            self.read[mine] += 1
            yield piece
            await asyncio.sleep(0)


async def test_deepconf_end_to_end_through_the_openai_backend() -> None:
    warmup = [trace(answer(42, i), c) for i, c in enumerate((3.0, 3.0, 2.0, 3.0))]
    long = answer(41, 6)
    falling = [3.0] * 4 + [1.0] * (len(tokens_of(long)) - 4)
    streamed = [trace(long, falling), trace(answer(42, 5), 3.5)]
    upstream = LogprobUpstream(warmup, streamed)
    backend = OpenAICompatBackend("http://up/v1", http=HandlerUpstream(upstream))
    app = create_app(Settings(), backend=backend)
    try:
        async with asgi_client(app) as client:
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "deepconf-m",
                    "messages": [user("What is 6 * 7?")],
                    "ponder": {"deepconf": ONLINE, "trace": True},
                },
            )
            await settle()
    finally:
        await backend.aclose()
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == answer(42, 5)
    assert response.headers["x-ponder-backend-calls"] == "3"
    first, cut, finished = upstream.bodies
    assert (first.get("n"), first["logprobs"], first["top_logprobs"], first.get("stream")) == (
        4,
        True,
        TOP,
        None,
    )
    assert (cut["stream"], cut["logprobs"], cut["top_logprobs"]) == (True, True, TOP)
    assert finished["stream"] is True
    # the cut stream was read up to the token it was cut at (a chunk of slack for read-ahead),
    # of the 16 tokens and 3 closing chunks it had; the other to its end
    assert upstream.read[0] <= 6 < len(tokens_of(long)) + 3
    assert upstream.read[1] == len(tokens_of(answer(42, 5))) + 3
    (vote,) = trace_steps(body, "vote")
    assert vote["tally"] == {"42": 4}
    # usage: the upstream's counts for the calls that ended, Ponder's for the cut one
    messages = [Message("user", "What is 6 * 7?")]
    warm_tokens = sum(len(tokens_of(t.content or "")) for t in warmup)
    expected = (
        Usage(20, warm_tokens)
        + Usage(count_prompt_tokens(messages), 5)
        + Usage(20, len(tokens_of(answer(42, 5))))
    )
    assert body["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert body["usage"]["completion_tokens"] == expected.completion_tokens


async def test_online_failed_streams_do_not_vote_and_a_refused_wave_ends_the_sampling() -> None:
    warmup = [trace(answer(41 + i % 2, i), 3.0) for i in range(4)]
    streamed: list[Reply] = [
        trace(answer(42, 4), 3.0),
        BackendUnavailable("down"),
        *(trace(answer(42, 5 + i), 3.0) for i in range(4)),
    ]
    backend = scripted_traces(warmup, streamed)
    options = {**ONLINE, "samples": 16}
    response = await chat(
        backend, DEEPCONF, ponder={"deepconf": options, "max_backend_calls": 3, "trace": True}
    )
    assert response.status_code == 200
    body = response.json()
    # 2 to 2 after the warmup: a wave of 6 streams, of which the budget lets 2 start (one
    # fails); 3 to 2 then needs a wave of 5, which the budget refuses whole
    assert [(c.n, c.stream) for c in backend.calls] == [(4, False), (1, True), (1, True)]
    waves = trace_steps(body, "wave")
    assert [(w["streamed"], w["failed"]) for w in waves] == [(6, 5)]
    (failed,) = trace_steps(body, "wave_failed")
    assert (failed["wave"], failed["drawn"]) == (2, 5)
    (vote,) = trace_steps(body, "vote")
    assert (vote["tally"], vote["drawn"], vote["survivors"]) == ({"41": 2, "42": 3}, 10, 5)
