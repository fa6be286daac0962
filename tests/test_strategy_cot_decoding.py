"""`cot_decoding`: branch on the k most likely first tokens, continue each greedily, answer with
the path whose answer tokens the model was surest of (top-1 minus top-2 probability), or with
`aggregate` the best path of the answer whose paths were surest in sum."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

from ponder.backends.base import Capabilities
from ponder.strategies.context import RequestContext
from ponder.strategies.cot_decoding import (
    CoTDecoding,
    CoTDecodingConfig,
    answer_span,
    margin,
    path_tokens,
    score_path,
)
from ponder.testing import Call, logprob_reply
from ponder.types import Completion, Message, Sampling
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    scripted,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

if TYPE_CHECKING:
    from ponder.backends.llamacpp import EmbeddedBackend

COT = f"cot_decoding-{MODEL}"
CAN = Capabilities(continuation=True, logprobs=True)
QUESTION = [user("I have 2 apples and buy 2 more. How many do I have?")]

Alternatives = list[tuple[str, float]]


def tok(text: str, p1: float, p2: float) -> Alternatives:
    """A greedy token `text` drawn with probability p1, the runner-up at p2."""
    return [(text, math.log(p1)), ("~", math.log(p2))]


# the first tokens: margin 0.6 - 0.2 = 0.4 at the first step
FIRST = [("The", math.log(0.6)), ("Let", math.log(0.2)), ("4", math.log(0.15))]
PATHS: dict[str, list[Alternatives]] = {
    # "5", drawn at 0.8 against 0.1: confidence 0.7
    "The": [
        tok(" answer", 0.9, 0.05),
        tok(" is", 0.8, 0.1),
        tok(" 5", 0.8, 0.1),
        tok(".", 0.99, 0.005),
    ],
    # "4", at 0.6 against 0.1: confidence 0.5
    "Let": [
        tok("'s", 0.9, 0.1),
        tok(" count", 0.5, 0.3),
        tok(": 2 + 2 = 4.", 0.7, 0.2),
        tok(" The answer is", 0.9, 0.05),
        tok(" 4", 0.6, 0.1),
        tok(".", 0.95, 0.01),
    ],
    # "4" is the forced first token itself: the first step's margin, 0.4
    "4": [tok(" apples", 0.5, 0.4)],
}
TEXTS = {first: first + "".join(t[0][0] for t in PATHS[first]) for first in PATHS}


def reply(call: Call, index: int) -> Completion:
    if call.sampling.max_tokens == 1:  # the probe for the first tokens
        return logprob_reply([FIRST[: call.sampling.top_logprobs]])
    assert call.prefix is not None
    return logprob_reply(PATHS[call.prefix])


def contents() -> list[str]:
    return ["The", *(TEXTS[f][len(f) :] for f in PATHS)]


# ---- scoring -------------------------------------------------------------------------------


def test_margin_is_top1_minus_top2_probability() -> None:
    assert margin([math.log(0.5), math.log(0.3), math.log(0.1)]) == pytest.approx(0.2)
    assert margin([math.log(0.1), math.log(0.7)]) == pytest.approx(0.6)
    assert margin([math.log(0.9)]) == pytest.approx(0.9)
    assert margin([]) == 0.0


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("The answer is 5.", (14, 15)),
        ("2 + 2 = 4, so the answer is $1,200 in all.", (29, 34)),
        ("We get 4. Then 4 + 0 = 4.\n#### 4", (31, 32)),
        ("\\boxed{12}", (7, 9)),
        ("B is wrong. The answer is B.", (26, 27)),  # a choice letter, as a word
        ("So the answer is (B) Paris", (17, 26)),
        ("The answer is yes.", (14, 17)),
        ("\\boxed{\\frac{1}{2}}", None),  # "1/2" is not written as such
        ("", None),
    ],
)
def test_answer_span_finds_where_the_final_answer_is_written(
    text: str, span: tuple[int, int] | None
) -> None:
    assert answer_span(text) == span


def test_a_path_is_scored_on_its_answer_tokens_only() -> None:
    tokens = [(" answer", 0.85), (" is", 0.7), (" 5", 0.7), (".", 0.99)]
    scored = score_path(tokens)
    assert scored.answer == "5" and scored.span == (11, 12) and scored.tokens == 1
    assert scored.confidence == pytest.approx(0.7)
    # an answer spread over tokens: the mean over those it touches
    scored = score_path([("It is 1", 0.2), ("2", 0.6), ("3.", 0.4), (" Done", 0.0)])
    assert scored.answer == "123" and scored.tokens == 3
    assert scored.confidence == pytest.approx(0.4)


def test_without_an_answer_written_every_token_is_scored() -> None:
    scored = score_path([("\\boxed{", 0.5), ("\\frac{1}{2}", 0.1), ("}", 0.3)])
    assert scored.span is None and scored.tokens == 3
    assert scored.confidence == pytest.approx(0.3)
    assert score_path([]).confidence == 0.0


def test_path_tokens_are_the_first_then_the_continuations_with_their_margins() -> None:
    continuation = logprob_reply(PATHS["4"])
    assert path_tokens("4", 0.4, continuation) == [("4", 0.4), (" apples", pytest.approx(0.1))]
    assert path_tokens("", 0.4, Completion("x")) == []


# ---- through the API -----------------------------------------------------------------------


async def test_answers_with_the_most_confident_path_after_one_probe_and_k_paths() -> None:
    backend = scripted(reply, capabilities=CAN)
    response = await chat(
        backend,
        COT,
        messages=QUESTION,
        temperature=0.9,
        max_tokens=100,
        seed=5,
        ponder={"trace": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == TEXTS["The"] == "The answer is 5."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert response.headers["x-ponder-backend-calls"] == "4"

    probe, *paths = backend.calls
    conversation = (Message("user", QUESTION[0]["content"]),)
    s = probe.sampling
    assert probe.prefix == "" and probe.conversation == conversation
    assert (s.max_tokens, s.temperature, s.logprobs, s.top_logprobs, s.seed) == (
        1,
        0.0,
        True,
        5,
        5,
    )
    assert [p.prefix for p in paths] == ["The", "Let", "4"]
    for p in paths:
        s = p.sampling
        assert p.conversation == conversation and not p.stream
        assert (s.temperature, s.top_p, s.logprobs, s.top_logprobs) == (0.0, None, True, 2)
        assert (s.max_tokens, s.seed) == (100, 5)

    # the probe's token and the other paths are reasoning; the answer costs its own path
    assert body["usage"] == usage_for(backend, contents(), answer=TEXTS["The"][3:])

    (first,) = trace_steps(body, "first_tokens")
    assert first["tokens"] == ["The", "Let", "4"]
    (step,) = trace_steps(body, "paths")
    assert step["chosen"] == 0 and step["by_answer"] == {}
    assert [(p["first"], p["answer"], p["scored_tokens"]) for p in step["paths"]] == [
        ("The", "5", 1),
        ("Let", "4", 1),
        ("4", "4", 1),
    ]
    assert [p["confidence"] for p in step["paths"]] == pytest.approx([0.7, 0.5, 0.4])


async def test_aggregate_sums_confidence_per_answer_and_answers_with_its_best_path() -> None:
    backend = scripted(reply, capabilities=CAN)
    response = await chat(
        backend, COT, messages=QUESTION, ponder={"cot_decoding": {"aggregate": True}, "trace": True}
    )
    body = response.json()
    # "4": 0.5 + 0.4 = 0.9 beats "5": 0.7; of the "4" paths, "Let..." is the surer
    assert body["choices"][0]["message"]["content"] == TEXTS["Let"]
    (step,) = trace_steps(body, "paths")
    assert step["chosen"] == 1
    assert step["by_answer"] == pytest.approx({"5": 0.7, "4": 0.9})
    assert body["usage"] == usage_for(backend, contents(), answer=TEXTS["Let"][3:])


async def test_k_sets_the_alternatives_asked_for_and_the_paths() -> None:
    backend = scripted(reply, capabilities=CAN)
    response = await chat(backend, COT, messages=QUESTION, ponder={"cot_decoding": {"k": 2}})
    assert response.json()["choices"][0]["message"]["content"] == TEXTS["The"]
    assert backend.calls[0].sampling.top_logprobs == 2
    assert [c.prefix for c in backend.calls[1:]] == ["The", "Let"]


async def test_first_tokens_that_are_not_whole_characters_are_skipped() -> None:
    broken = [("\ufffd", math.log(0.7)), *FIRST[:2], ("The", math.log(0.01)), ("", -9.0)]

    def replies(call: Call, index: int) -> Completion:
        if call.sampling.max_tokens == 1:
            return logprob_reply([broken])
        return reply(call, index)

    backend = scripted(replies, capabilities=CAN)
    response = await chat(backend, COT, messages=QUESTION, ponder={"trace": True})
    (first,) = trace_steps(response.json(), "first_tokens")
    assert first["tokens"] == ["The", "Let"]
    assert [c.prefix for c in backend.calls[1:]] == ["The", "Let"]


async def test_without_first_token_candidates_one_greedy_path_is_taken() -> None:
    backend = scripted(["", "The answer is 4."], capabilities=CAN)
    response = await chat(backend, COT, messages=QUESTION, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 4."
    assert [c.prefix for c in backend.calls] == ["", ""]
    assert trace_steps(body, "first_tokens")[0]["tokens"] == []
    (step,) = trace_steps(body, "paths")
    assert step["paths"][0]["confidence"] == 0.0  # no log-probabilities: nothing to be sure of


async def test_streams_the_paths_as_reasoning_then_the_answer() -> None:
    backend = scripted(reply, capabilities=CAN)
    response = await chat(backend, COT, messages=QUESTION, stream=True)
    assert streamed_text(response.text) == TEXTS["The"]
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.splitlines() == [
        "Branching on the first tokens 'The' (0.60), 'Let' (0.20), '4' (0.15)",
        "Path 1 (starts 'The'): answer '5', confidence 0.700: The answer is 5.",
        "Path 2 (starts 'Let'): answer '4', confidence 0.500: "
        "Let's count: 2 + 2 = 4. The answer is 4.",
        "Path 3 (starts '4'): answer '4', confidence 0.400: 4 apples",
        "Answering with path 1.",
    ]


async def test_without_continuation_or_logprobs_it_is_a_400_before_any_call() -> None:
    lacking = {
        "continuation and logprobs": Capabilities(),
        "continuation": Capabilities(logprobs=True),
        "logprobs": Capabilities(continuation=True),
    }
    for missing, caps in lacking.items():
        backend = scripted(reply, capabilities=caps)
        response = await chat(backend, COT, messages=QUESTION)
        assert_error(response, 400, code="unsupported_parameter")
        assert f"a backend with {missing}," in response.json()["error"]["message"]
        assert backend.calls == []


@pytest.mark.parametrize("options", [{"k": 0}, {"k": 11}, {"aggregate": "yes"}, {"paths": 3}])
async def test_bad_options_are_400s(options: dict[str, object]) -> None:
    backend = scripted(reply, capabilities=CAN)
    response = await chat(backend, COT, ponder={"cot_decoding": options})
    assert response.status_code == 400
    assert backend.calls == []


# ---- on the embedded model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_backend() -> Iterator[EmbeddedBackend]:
    from ponder.backends.llamacpp import EmbeddedBackend

    backend = EmbeddedBackend(MODEL, sequences=6, n_ctx=1024)
    yield backend
    asyncio.run(backend.aclose())


def _steps_by_size(before: Sequence[int], after: Sequence[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


TOM = "Tom has 3 apples and buys 4 more. How many apples does he have?"


@pytest.mark.integration
async def test_the_k_paths_decode_together_on_the_embedded_engine(
    engine_backend: EmbeddedBackend,
) -> None:
    k = 5
    ctx = RequestContext(
        request_id="r",
        model=MODEL,
        backend=engine_backend,
        sampling=Sampling(max_tokens=24),
    )
    before = engine_backend.engine_stats()
    strategy = CoTDecoding(CoTDecodingConfig(k=k))
    (answer,) = await strategy.run(ctx, [Message("user", TOM)])
    after = engine_backend.engine_stats()
    assert before is not None and after is not None

    (first,) = [s for s in ctx.trace if s.name == "first_tokens"]
    (paths,) = [s for s in ctx.trace if s.name == "paths"]
    firsts = first.detail["tokens"]
    assert len(firsts) == k and len(paths.detail["paths"]) == k
    assert answer.content and answer.content.startswith(firsts[paths.detail["chosen"]])
    assert ctx.meter.calls == 1 + k

    steps = _steps_by_size(before.batch_sequences, after.batch_sequences)
    path_tokens_total = ctx.meter.usage.completion_tokens - 1  # less the probe's one token
    # one after the other the paths would take a step per token; together, steps advance
    # all k paths at once
    assert steps[k] >= 8, steps
    assert sum(steps) < path_tokens_total / 2, (steps, path_tokens_total)
    # each path's prompt is the probe's and its first token; the probe's came from its cells
    usage = ctx.meter.usage
    probe_prompt = (usage.prompt_tokens - k) // (k + 1)
    assert usage.prompt_tokens == probe_prompt + k * (probe_prompt + 1)
    assert usage.cached_tokens >= k * probe_prompt
    assert after.prompt_tokens - before.prompt_tokens == usage.prompt_tokens - usage.cached_tokens


async def test_decoding_and_its_fields_as_other_proxies_clients_send_them() -> None:
    backend = scripted(reply, capabilities=CAN)
    response = await chat(
        backend, MODEL, messages=QUESTION, decoding="cot_decoding", k=2, aggregate_paths=False
    )
    assert response.status_code == 200, response.text
    assert len(backend.calls) == 1 + 2  # the probe, then k = 2 paths
    assert backend.calls[0].sampling.top_logprobs == 2
    assert response.json()["choices"][0]["message"]["content"] == TEXTS["The"]
    assert all("decoding" not in c.sampling.extra for c in backend.calls)
