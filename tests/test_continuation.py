"""Continuing the assistant's answer from a given start, and the model's next-token candidates:
how a call says so (`continuation_call`), the context's `continue_from`, `stream_from`,
`final_from` and `next_tokens`, the refusal where the backend cannot, and what the openai and
vllm backends send for it."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from ponder.backends.assemble import Assembler
from ponder.backends.base import (
    ADD_GENERATION_PROMPT,
    CONTINUE_FINAL_MESSAGE,
    Capabilities,
    continuation_call,
    continued_prefix,
)
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.errors import InvalidRequest, Unsupported
from ponder.strategies.context import RequestContext
from ponder.testing import Call, HandlerUpstream, ScriptedBackend, logprob_reply
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Delta, Message, Sampling
from tests.conftest import MODEL, scripted
from tests.test_vllm_backend import FakeEngine, fake_vllm  # noqa: F401  (the fixture)

CHAT = [Message("system", "Be brief."), Message("user", "What is 2 + 2?")]
CAN = Capabilities(continuation=True, logprobs=True)
TOP = [("The", math.log(0.5)), ("Let", math.log(0.3)), ("4", math.log(0.1))]


def context(backend: Any, **more: Any) -> RequestContext:
    return RequestContext(
        request_id="r",
        model=MODEL,
        backend=backend,
        sampling=Sampling(temperature=0.7, max_tokens=50, seed=3),
        **more,
    )


# ---- how a call asks for a continuation --------------------------------------------------


def test_a_continuation_is_the_prefix_as_an_open_assistant_turn_and_two_fields() -> None:
    sampling = Sampling(max_tokens=9, extra={"user": "u"})
    messages, continued = continuation_call(CHAT, "The answer", sampling)
    assert messages == [*CHAT, Message("assistant", "The answer")]
    assert continued == sampling.with_(
        extra={"user": "u", CONTINUE_FINAL_MESSAGE: True, ADD_GENERATION_PROMPT: False}
    )
    assert continued_prefix(messages, continued) == "The answer"
    assert continued_prefix(messages, sampling) is None  # an ordinary call: a new turn
    assert continued_prefix(CHAT, Sampling()) is None


def test_a_continuation_whose_last_message_is_not_the_assistants_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        continued_prefix(CHAT, Sampling(extra={CONTINUE_FINAL_MESSAGE: True}))
    assert info.value.param == "messages"


# ---- the context ---------------------------------------------------------------------------


async def test_continue_from_sends_one_metered_call_that_continues_the_prefix() -> None:
    backend = scripted(lambda call, i: f"{call.prefix}|rest", capabilities=CAN)
    ctx = context(backend)
    (choice,) = await ctx.continue_from(CHAT, "The answer is")
    assert choice.content == "The answer is|rest"
    (call,) = backend.calls
    assert call.prefix == "The answer is"
    assert call.conversation == tuple(CHAT)
    assert call.messages[-1] == Message("assistant", "The answer is")
    assert call.sampling.extra == {CONTINUE_FINAL_MESSAGE: True, ADD_GENERATION_PROMPT: False}
    assert (call.sampling.temperature, call.sampling.max_tokens) == (0.7, 50)
    assert ctx.meter.calls == 1
    # the prompt holds the prefix: it is counted
    prompt = count_prompt_tokens(call.messages)
    assert prompt > count_prompt_tokens(CHAT)
    assert ctx.meter.usage.prompt_tokens == prompt
    assert ctx.meter.usage.completion_tokens == count_tokens("The answer is|rest")


async def test_continue_from_with_n_and_own_sampling() -> None:
    backend = scripted(lambda call, i: f"{i}", capabilities=CAN)
    got = await context(backend).continue_from(CHAT, "", Sampling(temperature=0), n=3)
    assert [c.content for c in got] == ["0", "1", "2"]
    (call,) = backend.calls
    assert (call.n, call.prefix, call.sampling.temperature) == (3, "", 0)


async def test_without_continuation_nothing_is_sent_and_the_refusal_names_it() -> None:
    backend = scripted(["x"], capabilities=Capabilities(logprobs=True))
    ctx = context(backend)
    for attempt in (
        ctx.continue_from(CHAT, "a"),
        ctx.final_from(CHAT, "a"),
        ctx.next_tokens(CHAT, "a", 3),
    ):
        with pytest.raises(Unsupported) as info:
            await attempt
        assert "continuation" in info.value.message and info.value.status_code == 400
    with pytest.raises(Unsupported):
        async for _ in ctx.stream_from(CHAT, "a"):
            pass
    assert backend.calls == [] and ctx.meter.calls == 0


async def test_next_tokens_asks_for_one_greedy_token_with_k_alternatives() -> None:
    def reply(call: Call, i: int) -> Completion:
        k = call.sampling.top_logprobs or 0
        return logprob_reply([TOP[:k]])

    backend = scripted(reply, capabilities=CAN)
    ctx = context(backend)
    assert await ctx.next_tokens(CHAT, "So", 2) == TOP[:2]
    (call,) = backend.calls
    s = call.sampling
    assert call.prefix == "So" and call.conversation == tuple(CHAT)
    assert (s.max_tokens, s.temperature, s.logprobs, s.top_logprobs) == (1, 0.0, True, 2)
    assert s.seed == 3  # the client's, kept
    assert ctx.meter.calls == 1


async def test_next_tokens_are_ranked_and_empty_without_log_probabilities() -> None:
    backend = scripted(
        [logprob_reply([[TOP[2], TOP[0], TOP[1]]]), Completion("x")], capabilities=CAN
    )
    ctx = context(backend)
    assert await ctx.next_tokens(CHAT, "", 3) == TOP
    assert await ctx.next_tokens(CHAT, "", 3) == []


async def test_next_tokens_need_log_probabilities() -> None:
    backend = scripted(["x"], capabilities=Capabilities(continuation=True))
    with pytest.raises(Unsupported) as info:
        await context(backend).next_tokens(CHAT, "", 3)
    assert "logprobs" in info.value.message
    assert backend.calls == []


async def test_stream_from_and_final_from_stream_the_continuation() -> None:
    backend = scripted(lambda call, i: "four apples in all", capabilities=CAN)
    sent: list[Delta] = []
    ctx = context(backend, sink=sent.append)
    assembler = Assembler()
    async for delta in ctx.stream_from(CHAT, "There are"):
        assembler.add(delta)
    assert assembler.completions()[0].content == "four apples in all"
    assert sent == []  # a stream is the strategy's own
    (answer,) = await ctx.final_from(CHAT, "There are")
    assert answer.content == "four apples in all"
    assert "".join(d.content or "" for d in sent) == "four apples in all"
    assert [c.stream for c in backend.calls] == [True, True]
    assert {c.prefix for c in backend.calls} == {"There are"}
    assert ctx.meter.calls == 2


async def test_scripted_streams_carry_log_probabilities_when_asked() -> None:
    reply = logprob_reply([[("a", -0.1), ("b", -2.0)], [(" c", -0.2)]])
    backend = scripted([reply, reply], capabilities=CAN)
    for logprobs in (True, False):
        assembler = Assembler()
        async for delta in backend.stream(MODEL, CHAT, Sampling(logprobs=logprobs)):
            assembler.add(delta)
        (got,) = assembler.completions()
        assert got.content == "a c"
        assert got.logprobs == (reply.logprobs if logprobs else None)


def test_logprob_reply_is_greedy_text_with_alternatives() -> None:
    reply = logprob_reply([[("The", -0.5), ("A", -1.5)], [(" end", -0.1)]], "length")
    assert reply.content == "The end" and reply.finish_reason == "length"
    assert reply.logprobs == {
        "content": [
            {
                "token": "The",
                "logprob": -0.5,
                "bytes": list(b"The"),
                "top_logprobs": [
                    {"token": "The", "logprob": -0.5, "bytes": list(b"The")},
                    {"token": "A", "logprob": -1.5, "bytes": list(b"A")},
                ],
            },
            {
                "token": " end",
                "logprob": -0.1,
                "bytes": list(b" end"),
                "top_logprobs": [{"token": " end", "logprob": -0.1, "bytes": list(b" end")}],
            },
        ]
    }


def test_old_style_scripted_backends_are_unchanged() -> None:
    backend = ScriptedBackend()
    assert not backend.capabilities.continuation and not backend.capabilities.thinking
    call = Call(MODEL, tuple(CHAT), Sampling(), 1, stream=False)
    assert call.prefix is None and call.conversation == tuple(CHAT)


# ---- the openai backend --------------------------------------------------------------------


def upstream(bodies: list[dict[str, Any]], *, continuation: bool) -> OpenAICompatBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " 4."}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 2},
            },
        )

    return OpenAICompatBackend(
        "http://up/v1", http=HandlerUpstream(handler), continuation=continuation
    )


async def test_the_openai_backend_continues_only_where_declared() -> None:
    bodies: list[dict[str, Any]] = []
    assert not upstream(bodies, continuation=False).capabilities.continuation
    with pytest.raises(Unsupported):
        await context(upstream(bodies, continuation=False)).continue_from(CHAT, "It is")
    assert bodies == []

    backend = upstream(bodies, continuation=True)
    assert backend.capabilities.continuation and backend.capabilities.native_n
    (choice,) = await context(backend).continue_from(CHAT, "It is")
    assert choice.content == " 4."
    (body,) = bodies
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "It is"},
    ]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.7, 50, 3)


# ---- the vllm backend ----------------------------------------------------------------------


@pytest.mark.usefixtures("fake_vllm")
async def test_vllm_continues_after_the_generation_prompt_with_the_prefix_tokens() -> None:
    from ponder.backends.vllm import VLLMBackend

    backend = VLLMBackend("Org/Tiny-Chat")
    assert backend.capabilities.continuation
    ctx = context(backend)
    await ctx.complete(CHAT, Sampling(max_tokens=3))
    await ctx.continue_from(CHAT, "Two and two", Sampling(max_tokens=3))
    engine = backend._engine
    assert isinstance(engine, FakeEngine)
    (_, plain, _), (_, continued, _) = engine.requests
    # the fake tokenizer: one token a word, numbered from 0 in each text it encodes
    assert continued == [*plain, 0, 1, 2]
    assert ctx.meter.usage.prompt_tokens == len(plain) + len(continued)


async def test_the_operator_says_which_upstreams_continue_a_prefilled_turn() -> None:
    from ponder.backends import build_backend
    from ponder.backends.pool import Upstream, UpstreamPool
    from ponder.config import Settings

    plain = build_backend(Settings(backend="openai", base_url="http://up/v1"))
    able = build_backend(
        Settings(backend="openai", base_url="http://up/v1", upstream_continuation=True)
    )
    try:
        assert (plain.capabilities.continuation, able.capabilities.continuation) == (False, True)
    finally:
        await plain.aclose()
        await able.aclose()
    # a pool continues only where every upstream does
    yes = ScriptedBackend(capabilities=Capabilities(continuation=True, logprobs=True))
    no = ScriptedBackend(capabilities=Capabilities(logprobs=True))
    both = UpstreamPool([Upstream("a", yes), Upstream("b", no)])
    alone = UpstreamPool([Upstream("a", yes)])
    assert both.capabilities.continuation is False
    assert alone.capabilities.continuation is True
    assert alone.client().capabilities.continuation is True
