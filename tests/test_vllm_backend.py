"""The vllm backend: its pure parts everywhere, the backend itself over a fake engine, and the
real engine on a GPU (PONDER_TEST_VLLM_MODEL=path of a small chat model)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ponder.backends.assemble import Assembler
from ponder.backends.base import Backend
from ponder.backends.vllm import VLLMBackend, default_model_id
from ponder.backends.vllm_outputs import (
    CumulativeDeltas,
    finish_of,
    logprobs_content,
    sampling_kwargs,
    structured_output,
)
from ponder.errors import BackendError, BackendUnavailable, InvalidRequest, Unsupported
from ponder.types import Delta, Message, Sampling, ToolCall, Usage

# ---- fakes of vLLM's output objects ---------------------------------------------------------


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class Out:
    """A `vllm.CompletionOutput`: cumulative text and token ids of one choice."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, FakeLogprob]] | None = None


@dataclass
class RequestOut:
    outputs: list[Out]
    finished: bool = False


# ---- pure functions -------------------------------------------------------------------------


def test_default_model_id_is_the_lowercased_last_path_component() -> None:
    assert default_model_id("Qwen/Qwen2.5-0.5B-Instruct") == "qwen2.5-0.5b-instruct"
    assert default_model_id("/models/SmolLM2-135M/") == "smollm2-135m"
    assert default_model_id("tiny") == "tiny"


def test_sampling_kwargs_leave_unset_fields_to_vllm() -> None:
    assert sampling_kwargs(Sampling()) == {"n": 1}
    assert sampling_kwargs(Sampling(), n=3, default_max_tokens=100) == {"n": 3, "max_tokens": 100}


def test_sampling_kwargs_map_every_field() -> None:
    sampling = Sampling(
        temperature=0.7,
        top_p=0.9,
        max_tokens=32,
        stop=("\n\n", "END"),
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=3,
        extra={"user": "u1"},
    )
    assert sampling_kwargs(sampling, n=4, default_max_tokens=1000) == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logprobs": 3,
        "stop": ["\n\n", "END"],
    }


def test_sampling_kwargs_logprobs_without_top_asks_for_the_chosen_token_only() -> None:
    assert sampling_kwargs(Sampling(logprobs=True)) == {"n": 1, "logprobs": 0}
    assert sampling_kwargs(Sampling(top_logprobs=5)) == {"n": 1}  # logprobs off: nothing


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"json_object": True}),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}, {"json": SCHEMA}),
        ({"type": "json_schema", "json_schema": {"name": "any"}}, {"json_object": True}),
    ],
)
def test_structured_output_follows_response_format(
    response_format: dict[str, Any] | None, expected: dict[str, Any] | None
) -> None:
    assert structured_output(Sampling(response_format=response_format)) == expected


def test_finish_reasons() -> None:
    assert finish_of("length") == "length"
    assert [finish_of(r) for r in ("stop", "abort", None, "weird")] == ["stop"] * 4


def test_cumulative_outputs_become_deltas_of_new_text() -> None:
    tracker = CumulativeDeltas()
    steps = [
        [Out(0, "Hel", [1])],
        [Out(1, "A", [9])],  # with n > 1, vLLM v1 sends one choice at a time
        [Out(0, "Hello", [1, 2]), Out(1, "A", [9])],  # no new text for choice 1
        [Out(0, "Hello world", [1, 2, 3], "stop")],
        [Out(0, "Hello world", [1, 2, 3], "stop")],  # repeated after finishing: ignored
        [Out(1, "AB", [9, 10], "length")],
    ]
    deltas = [d for step in steps for d in tracker.feed(step)]
    assert deltas == [
        Delta(index=0, content="Hel"),
        Delta(index=1, content="A"),
        Delta(index=0, content="lo"),
        Delta(index=0, content=" world"),
        Delta(index=0, finish_reason="stop"),
        Delta(index=1, content="B"),
        Delta(index=1, finish_reason="length"),
    ]
    assert tracker.completion_tokens == 5
    assert tracker.finish(2) == []


def test_cumulative_deltas_finish_choices_the_engine_left_open() -> None:
    tracker = CumulativeDeltas()
    assert tracker.feed([Out(1, "x", [5], "abort")]) == [
        Delta(index=1, content="x"),
        Delta(index=1, finish_reason="stop"),
    ]
    assert tracker.finish(3) == [
        Delta(index=0, finish_reason="stop"),
        Delta(index=2, finish_reason="stop"),
    ]


def test_cumulative_deltas_never_repeat_text_when_it_does_not_extend() -> None:
    tracker = CumulativeDeltas()
    tracker.feed([Out(0, "abc", [1, 2])])
    assert tracker.feed([Out(0, "ab", [1, 2])]) == []
    assert tracker.feed([Out(0, "abcd", [1, 2, 3])]) == [Delta(index=0, content="d")]


def _lp(chosen: int, *alternatives: tuple[int, float, str]) -> dict[int, FakeLogprob]:
    """A vLLM position: the chosen token (rank given by the list) plus alternatives."""
    entries = {
        tid: FakeLogprob(lp, rank, tok) for rank, (tid, lp, tok) in enumerate(alternatives, 1)
    }
    assert chosen in entries
    return entries


def test_logprobs_content_is_openai_shaped() -> None:
    positions = [
        _lp(5, (5, -0.1, "Hi"), (6, -2.5, "Hey")),
        {7: FakeLogprob(-3.0, 4, "!"), 8: FakeLogprob(-0.2, 1, "."), 9: FakeLogprob(-1.0, 2, "?")},
    ]
    assert logprobs_content([5, 7], positions, top_n=2) == [
        {
            "token": "Hi",
            "logprob": -0.1,
            "bytes": [72, 105],
            "top_logprobs": [
                {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                {"token": "Hey", "logprob": -2.5, "bytes": [72, 101, 121]},
            ],
        },
        {
            "token": "!",
            "logprob": -3.0,
            "bytes": [33],
            "top_logprobs": [
                {"token": ".", "logprob": -0.2, "bytes": [46]},
                {"token": "?", "logprob": -1.0, "bytes": [63]},
            ],
        },
    ]
    assert logprobs_content([5], positions[:1], top_n=0)[0]["top_logprobs"] == []


def test_cumulative_deltas_carry_the_new_tokens_logprobs() -> None:
    tracker = CumulativeDeltas(top_logprobs=0)
    first = _lp(1, (1, -0.5, "a"))
    second = _lp(2, (2, -0.25, "b"))
    d1 = tracker.feed([Out(0, "a", [1], logprobs=[first])])
    d2 = tracker.feed([Out(0, "ab", [1, 2], "stop", logprobs=[first, second])])
    assert [d.logprobs for d in d1] == [
        {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]}
    ]
    assert d2[0].logprobs == {
        "content": [{"token": "b", "logprob": -0.25, "bytes": [98], "top_logprobs": []}]
    }
    assert d2[1] == Delta(index=0, finish_reason="stop")


def test_module_imports_without_vllm() -> None:
    code = "import sys, ponder.backends.vllm; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the backend over a fake engine ----------------------------------------------------------


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("temperature", 1.0) < 0:
            raise ValueError("temperature must be non-negative")
        self.kwargs = kwargs


class FakeStructuredParams:
    """vLLM's `StructuredOutputsParams` / `GuidedDecodingParams`: exactly one constraint."""

    def __init__(self, **kwargs: Any) -> None:
        if len(kwargs) != 1:
            raise ValueError("You can only use one kind of structured outputs constraint")
        self.kwargs = kwargs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeStructuredParams) and other.kwargs == self.kwargs


@dataclass
class FakeTokenizer:
    """A chat template of one word a token: `<role> content`, a call as `<call> name args`,
    and where it shows tools (`shows_tools`), `<tools> name ...` first."""

    shows_tools: bool = True
    rendered: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return 100  # the vocabulary

    def apply_chat_template(
        self,
        chat: list[dict[str, Any]],
        *,
        tokenize: bool,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        assert tokenize is False and add_generation_prompt is True
        if any(m["role"] == "system" for m in chat[1:]):
            raise RuntimeError("System message must be first")  # as jinja's raise_exception
        parts = [f"<tools> {' '.join(t['function']['name'] for t in tools)}"] if tools else []
        if not self.shows_tools:
            parts = []
        for m in chat:
            calls = [c["function"] for c in m.get("tool_calls", ())]
            said = [m["content"]] if m["content"] is not None else []
            said += [f"<call> {c['name']} {json.dumps(c['arguments'])}" for c in calls]
            parts.append(f"<{m['role']}> {' '.join(said)}")
        text = " ".join(parts) + " <assistant>"
        self.rendered.append(text)
        return text

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        assert add_special_tokens is False
        return list(range(len(text.split())))


@dataclass
class FakeEngine:
    """Answers choice i with words `w{i}-0 w{i}-1 ...`, one word a token, one choice at a
    time as vLLM v1 streams n > 1; FINAL_ONLY gives one output with every choice."""

    args: Any
    words: int = 3
    answers: list[str] | None = None
    """Choice i's text, one word a token; else `w{i}-0 w{i}-1 ...`, `words` of them."""
    chat_tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    tokenizer_at_hand: bool = True
    fail_with: Exception | None = None
    model_config: Any = field(default_factory=lambda: types.SimpleNamespace(max_model_len=40))
    requests: list[tuple[str, list[int], Any]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    shut_down: bool = False

    @classmethod
    def from_engine_args(cls, args: Any) -> FakeEngine:
        return cls(args)

    @property
    def tokenizer(self) -> Any:
        """A TokenizerGroup, as vLLM before 0.10 has it; None where not at hand."""
        return (
            types.SimpleNamespace(tokenizer=self.chat_tokenizer) if self.tokenizer_at_hand else None
        )

    async def get_tokenizer(self) -> FakeTokenizer:  # a coroutine, as before vLLM 0.11
        return self.chat_tokenizer

    async def generate(
        self, *, prompt: dict[str, list[int]], sampling_params: Any, request_id: str
    ) -> AsyncIterator[RequestOut]:
        self.requests.append((request_id, prompt["prompt_token_ids"], sampling_params))
        kw = sampling_params.kwargs
        n, limit = kw["n"], kw.get("max_tokens", 16)
        try:
            if self.fail_with is not None:
                raise self.fail_with
            finals = []
            for i in range(n):
                words = self.answers[i].split(" ") if self.answers else None
                count = min(len(words) if words else self.words, limit)
                for k in range(1, count + 1):
                    text = " ".join(words[:k] if words else (f"w{i}-{j}" for j in range(k)))
                    reason = None if k < count else ("length" if count == limit else "stop")
                    out = Out(i, text, list(range(k)), reason)
                    if k == count:
                        finals.append(out)
                    if kw.get("output_kind") != "FINAL_ONLY":
                        await asyncio.sleep(0)
                        yield RequestOut([out], finished=(i == n - 1 and k == count))
            if kw.get("output_kind") == "FINAL_ONLY":
                yield RequestOut(finals, finished=True)
        except GeneratorExit:
            self.closed.append(request_id)
            raise

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if isinstance(self.fail_with, RuntimeError):
            raise self.fail_with

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs = lambda **kw: types.SimpleNamespace(**kw)  # type: ignore[attr-defined]
    vllm.AsyncLLMEngine = FakeEngine  # type: ignore[attr-defined]
    vllm.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    sp = types.ModuleType("vllm.sampling_params")
    sp.RequestOutputKind = types.SimpleNamespace(FINAL_ONLY="FINAL_ONLY")  # type: ignore[attr-defined]
    sp.StructuredOutputsParams = FakeStructuredParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    yield


@pytest.fixture
def backend(fake_vllm: None) -> VLLMBackend:
    return VLLMBackend("Org/Tiny-Chat", gpu_memory_utilization=0.5)


def shown(backend: VLLMBackend) -> list[str]:
    """The chats the backend rendered, the probe of its template's tools left out."""
    return [r for r in engine_of(backend).chat_tokenizer.rendered if "ponder_probe" not in r]


def engine_of(backend: VLLMBackend) -> FakeEngine:
    engine = backend._engine
    assert isinstance(engine, FakeEngine)
    return engine


HELLO = [Message("system", "Be kind."), Message("user", "Say hello")]  # 7 prompt tokens, one a word


async def test_backend_identity(backend: VLLMBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == "vllm"
    assert backend.capabilities.native_n and backend.capabilities.logprobs
    assert backend.capabilities.tools  # its chat template shows tools
    assert backend.capabilities.json_schema and backend.capabilities.max_concurrency == 256
    assert backend.capabilities.context_window == 40  # the engine's max_model_len
    assert await backend.models() == ["tiny-chat"]
    assert backend.serves("tiny-chat") and not backend.serves("Org/Tiny-Chat")
    assert engine_of(backend).args.model == "Org/Tiny-Chat"
    assert engine_of(backend).args.gpu_memory_utilization == 0.5
    assert await backend.ready()
    await backend.aclose()
    assert not await backend.ready()


async def test_explicit_model_id(fake_vllm: None) -> None:
    backend = VLLMBackend("/m/x", model_id="mine")
    assert await backend.models() == ["mine"] and backend.serves("mine")


def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="pip install"):
        VLLMBackend("some/model")


async def test_complete_returns_n_choices_with_usage(backend: VLLMBackend) -> None:
    choices = await backend.complete("tiny-chat", HELLO, Sampling(temperature=0.5, seed=1), n=2)
    assert [c.content for c in choices] == ["w0-0 w0-1 w0-2", "w1-0 w1-1 w1-2"]
    assert [c.finish_reason for c in choices] == ["stop", "stop"]
    assert [c.usage for c in choices] == [Usage(7, 3), Usage(0, 3)]
    ((request_id, prompt_ids, params),) = engine_of(backend).requests
    assert request_id.startswith("ponder-") and len(prompt_ids) == 7
    assert params.kwargs == {
        "n": 2,
        "temperature": 0.5,
        "seed": 1,
        "max_tokens": 33,  # the room left in the 40-token context
        "output_kind": "FINAL_ONLY",
    }


async def test_complete_reports_length(backend: VLLMBackend) -> None:
    (choice,) = await backend.complete("tiny-chat", HELLO, Sampling(max_tokens=2))
    assert (choice.content, choice.finish_reason, choice.usage) == (
        "w0-0 w0-1",
        "length",
        Usage(7, 2),
    )


async def test_stream_yields_new_text_one_finish_per_choice_and_usage(backend: VLLMBackend) -> None:
    deltas = [d async for d in backend.stream("tiny-chat", HELLO, Sampling(), n=2)]
    assert deltas[-1] == Delta(usage=Usage(7, 6))
    finishes = [d.index for d in deltas if d.finish_reason is not None]
    assert sorted(finishes) == [0, 1]
    assert [d.content for d in deltas if d.index == 1 and d.content] == ["w1-0", " w1-1", " w1-2"]
    assembler = Assembler(2)
    for d in deltas:
        assembler.add(d)
    assert [c.content for c in assembler.completions()] == ["w0-0 w0-1 w0-2", "w1-0 w1-1 w1-2"]
    ((_, _, params),) = engine_of(backend).requests
    assert "output_kind" not in params.kwargs  # cumulative outputs while streaming
    assert engine_of(backend).aborted == []


async def test_request_ids_are_unique(backend: VLLMBackend) -> None:
    await backend.complete("tiny-chat", HELLO, Sampling())
    await backend.complete("tiny-chat", HELLO, Sampling())
    ids = [r[0] for r in engine_of(backend).requests]
    assert len(set(ids)) == 2


async def test_closing_the_stream_early_aborts_the_request(backend: VLLMBackend) -> None:
    engine = engine_of(backend)
    engine.words = 10
    stream = backend.stream("tiny-chat", HELLO, Sampling())
    first = await anext(stream)
    assert first == Delta(index=0, content="w0-0")
    await stream.aclose()  # type: ignore[attr-defined]
    ((request_id, _, _),) = engine.requests
    assert engine.closed == [request_id]
    assert engine.aborted == [request_id]


async def test_cancelling_a_stream_consumer_aborts_the_request(backend: VLLMBackend) -> None:
    engine = engine_of(backend)
    engine.words = 10_000
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream("tiny-chat", HELLO, Sampling(max_tokens=10_000)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ((request_id, _, _),) = engine.requests
    assert engine.aborted == [request_id]


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (RuntimeError("boom"), BackendError),
        (type("EngineDeadError", (RuntimeError,), {})(), BackendUnavailable),
        (ValueError("prompt too long"), InvalidRequest),
    ],
)
async def test_engine_failures_become_ponder_errors(
    backend: VLLMBackend, failure: Exception, error: type[Exception]
) -> None:
    engine_of(backend).fail_with = failure
    with pytest.raises(error) as caught:
        await backend.complete("tiny-chat", HELLO, Sampling())
    assert caught.value.__cause__ is failure
    with pytest.raises(error):
        _ = [d async for d in backend.stream("tiny-chat", HELLO, Sampling())]


async def test_bad_requests_never_reach_the_engine(backend: VLLMBackend) -> None:
    with pytest.raises(InvalidRequest, match="temperature"):
        await backend.complete("tiny-chat", HELLO, Sampling(temperature=-1))
    with pytest.raises(InvalidRequest, match="chat template"):
        await backend.complete("tiny-chat", [*HELLO, Message("system", "late")], Sampling())
    with pytest.raises(InvalidRequest) as err:
        await backend.complete("tiny-chat", [Message("user", "word " * 40)], Sampling())
    assert err.value.code == "context_length_exceeded"
    assert engine_of(backend).requests == []


async def test_closed_backend(backend: VLLMBackend) -> None:
    engine = engine_of(backend)
    await backend.aclose()
    assert engine.shut_down
    with pytest.raises(BackendUnavailable):
        await backend.complete("tiny-chat", HELLO, Sampling())


async def test_unhealthy_engine_is_not_ready(backend: VLLMBackend) -> None:
    engine_of(backend).fail_with = RuntimeError("dead")
    assert not await backend.ready()


# ---- the real engine ------------------------------------------------------------------------


@pytest.mark.gpu
async def test_real_vllm_engine() -> None:
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    path = os.environ.get("PONDER_TEST_VLLM_MODEL")
    if not path:
        pytest.skip("set PONDER_TEST_VLLM_MODEL to a small chat model's path")
    backend = VLLMBackend(path, gpu_memory_utilization=0.5)
    model = backend.model_id
    messages = [Message("system", "You are a helpful assistant."), Message("user", "Say hello.")]
    sampling = Sampling(temperature=0.8, max_tokens=12, seed=1)
    try:
        assert await backend.ready()
        choices = await backend.complete(model, messages, sampling, n=2)
        assert len(choices) == 2
        assert choices[0].usage.prompt_tokens > 0 and choices[1].usage.prompt_tokens == 0
        for c in choices:
            assert c.finish_reason in ("stop", "length")
            assert 0 < c.usage.completion_tokens <= 12
            assert c.finish_reason == "stop" or c.usage.completion_tokens == 12

        deltas = [d async for d in backend.stream(model, messages, sampling, n=2)]
        usage = deltas[-1].usage
        assert usage is not None and usage.prompt_tokens == choices[0].usage.prompt_tokens
        assert 0 < usage.completion_tokens <= 24
        assert sorted(d.index for d in deltas if d.finish_reason is not None) == [0, 1]
        assembler = Assembler(2)
        for d in deltas:
            assembler.add(d)
        assert all(c.content for c in assembler.completions())

        stream = backend.stream(model, messages, Sampling(max_tokens=200))
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]  # aborts; the engine stays usable
        assert await backend.complete(model, messages, Sampling(max_tokens=4))

        ask = [Message("user", "Give an object with an integer a.")]
        shaped = Sampling(max_tokens=40, response_format=JSON_SCHEMA)
        (answer,) = await backend.complete(model, ask, shaped)
        assert isinstance(json.loads(answer.content or "")["a"], int)
    finally:
        await backend.aclose()


async def test_prompt_tokens_counts_what_a_call_sends(backend: VLLMBackend) -> None:
    """For the Messages API's count_tokens: the prompt as the chat template renders it and the
    tokenizer splits it, the same ids a call sends, without a call."""
    assert await backend.prompt_tokens(HELLO, Sampling()) == 7
    assert engine_of(backend).requests == []
    await backend.complete("tiny-chat", HELLO, Sampling(max_tokens=2))
    ((_, sent, _),) = engine_of(backend).requests
    assert len(sent) == 7


async def test_count_tokens_on_vllm_is_its_own_count(backend: VLLMBackend) -> None:
    from ponder.config import Settings
    from ponder.proxy import create_app
    from tests.conftest import asgi_client

    body = {
        "model": "tiny-chat",
        "system": "Be kind.",
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    async with asgi_client(create_app(Settings(), backend=backend)) as client:
        response = await client.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"input_tokens": 7}


# ---- response_format and logit_bias --------------------------------------------------------

JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}


async def test_response_format_constrains_decoding(backend: VLLMBackend) -> None:
    assert backend.capabilities.json_schema
    await backend.complete("tiny-chat", HELLO, Sampling(response_format=JSON_SCHEMA))
    await backend.complete("tiny-chat", HELLO, Sampling(response_format={"type": "json_object"}))
    _ = [d async for d in backend.stream("tiny-chat", HELLO, Sampling(response_format=JSON_SCHEMA))]
    sent = [params.kwargs.get("structured_outputs") for _, _, params in engine_of(backend).requests]
    assert sent == [
        FakeStructuredParams(json=SCHEMA),
        FakeStructuredParams(json_object=True),
        FakeStructuredParams(json=SCHEMA),
    ]
    await backend.complete("tiny-chat", HELLO, Sampling(response_format={"type": "text"}))
    assert "structured_outputs" not in engine_of(backend).requests[-1][2].kwargs


async def test_response_format_before_vllm_0_11_is_guided_decoding(
    fake_vllm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = sys.modules["vllm.sampling_params"]
    monkeypatch.delattr(sp, "StructuredOutputsParams")
    monkeypatch.setattr(sp, "GuidedDecodingParams", FakeStructuredParams, raising=False)
    backend = VLLMBackend("Org/Tiny-Chat")
    assert backend.capabilities.json_schema
    await backend.complete("tiny-chat", HELLO, Sampling(response_format=JSON_SCHEMA))
    ((_, _, params),) = engine_of(backend).requests
    assert params.kwargs["guided_decoding"] == FakeStructuredParams(json=SCHEMA)
    assert "structured_outputs" not in params.kwargs


async def test_response_format_without_structured_outputs_is_refused(
    fake_vllm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(sys.modules["vllm.sampling_params"], "StructuredOutputsParams")
    backend = VLLMBackend("Org/Tiny-Chat")
    assert not backend.capabilities.json_schema
    with pytest.raises(Unsupported) as err:
        await backend.complete("tiny-chat", HELLO, Sampling(response_format=JSON_SCHEMA))
    assert err.value.param == "response_format"
    assert engine_of(backend).requests == []
    assert await backend.complete("tiny-chat", HELLO, Sampling())  # free text still works


async def test_a_constraint_vllm_refuses_is_a_bad_request(
    backend: VLLMBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "_structured", ("structured_outputs", lambda **_: 1 / 0.0))
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a bad request
        await backend.complete("tiny-chat", HELLO, Sampling(response_format=JSON_SCHEMA))

    def refuse(**_: Any) -> None:
        raise ValueError("schema is not supported by xgrammar")

    monkeypatch.setattr(backend, "_structured", ("structured_outputs", refuse))
    with pytest.raises(InvalidRequest, match="xgrammar") as err:
        await backend.complete("tiny-chat", HELLO, Sampling(response_format=JSON_SCHEMA))
    assert err.value.param == "response_format"
    assert engine_of(backend).requests == []


async def test_logit_bias_reaches_the_sampler_as_token_ids(backend: VLLMBackend) -> None:
    bias = {"logit_bias": {"7": -100, "42": 2.5}}
    await backend.complete("tiny-chat", HELLO, Sampling(extra=bias))
    ((_, _, params),) = engine_of(backend).requests
    assert params.kwargs["logit_bias"] == {7: -100.0, 42: 2.5}


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ({"100": 1}, "not a token id of this model"),  # the vocabulary has 100 tokens
        ({"x": 1}, "not a token id of this model"),
        ({"7": 101}, "from -100 to 100"),
        ([7], "must be an object"),
    ],
)
async def test_a_bad_logit_bias_never_reaches_the_engine(
    backend: VLLMBackend, bias: Any, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        await backend.complete("tiny-chat", HELLO, Sampling(extra={"logit_bias": bias}))
    assert err.value.param == "logit_bias"
    assert engine_of(backend).requests == []


async def test_response_format_over_http_reaches_vllm(backend: VLLMBackend) -> None:
    from ponder.config import Settings
    from ponder.proxy import create_app
    from tests.conftest import asgi_client

    body = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "Say hello"}],
        "response_format": JSON_SCHEMA,
        "logit_bias": {"3": -100},
    }
    async with asgi_client(create_app(Settings(), backend=backend)) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    ((_, _, params),) = engine_of(backend).requests
    assert params.kwargs["structured_outputs"] == FakeStructuredParams(json=SCHEMA)
    assert params.kwargs["logit_bias"] == {3: -100.0}


# ---- tools ------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
CALL = '<tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'


async def test_tools_are_shown_and_the_calls_come_back(backend: VLLMBackend) -> None:
    engine = engine_of(backend)
    engine.answers = [f"Let me look. {CALL}", "It is sunny."]
    sampling = Sampling(tools=(WEATHER, TIME))
    first, second = await backend.complete("tiny-chat", HELLO, sampling, n=2)
    assert shown(backend) == [
        "<tools> get_weather get_time <system> Be kind. <user> Say hello <assistant>"
    ]
    assert (first.content, first.finish_reason) == ("Let me look.", "tool_calls")
    ((call,),) = [first.tool_calls]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert (second.content, second.finish_reason, second.tool_calls) == ("It is sunny.", "stop", ())
    assert first.usage == Usage(10, 10)  # the tools' words are prompt tokens


async def test_a_streamed_call_comes_after_the_content_and_before_its_finish(
    backend: VLLMBackend,
) -> None:
    engine_of(backend).answers = [CALL]
    deltas = [d async for d in backend.stream("tiny-chat", HELLO, Sampling(tools=(WEATHER,)))]
    assert not any(d.content for d in deltas)  # the call's text never went out as content
    calls = [d for d in deltas if d.tool_calls]
    finishes = [d for d in deltas if d.finish_reason]
    assert len(calls) == 1 and deltas.index(calls[0]) < deltas.index(finishes[0])
    assert [d.finish_reason for d in finishes] == ["tool_calls"]
    assembler = Assembler(1)
    for d in deltas:
        assembler.add(d)
    (choice,) = assembler.completions()
    assert choice.content is None and choice.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in choice.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert deltas[-1].usage == Usage(9, 7)  # the call is output tokens all the same


async def test_a_complete_answer_matches_the_assembled_stream(backend: VLLMBackend) -> None:
    engine_of(backend).answers = [f"Checking. {CALL} Done."]
    sampling = Sampling(tools=(WEATHER,))
    (whole,) = await backend.complete("tiny-chat", HELLO, sampling)
    assembler = Assembler(1)
    async for d in backend.stream("tiny-chat", HELLO, sampling):
        assembler.add(d)
    (streamed,) = assembler.completions()
    assert whole.content == streamed.content == "Checking.Done."
    assert whole.finish_reason == streamed.finish_reason == "tool_calls"
    assert [c.name for c in whole.tool_calls] == [c.name for c in streamed.tool_calls]


async def test_tool_choice_decides_what_the_model_is_shown(backend: VLLMBackend) -> None:
    engine = engine_of(backend)
    engine.answers = [CALL]
    named = {"type": "function", "function": {"name": "get_time"}}
    await backend.complete("tiny-chat", HELLO, Sampling(tools=(WEATHER, TIME), tool_choice=named))
    (answer,) = await backend.complete(
        "tiny-chat", HELLO, Sampling(tools=(WEATHER, TIME), tool_choice="none")
    )
    rendered = shown(backend)
    assert rendered[0].startswith("<tools> get_time <system>")
    assert not rendered[1].startswith("<tools>")
    assert answer.tool_calls == () and answer.content == CALL  # no tool offered, no call read
    with pytest.raises(InvalidRequest) as err:
        missing = {"type": "function", "function": {"name": "nope"}}
        await backend.complete("tiny-chat", HELLO, Sampling(tools=(WEATHER,), tool_choice=missing))
    assert err.value.param == "tool_choice"
    assert len(engine.requests) == 2


async def test_a_tool_conversation_renders_natively(backend: VLLMBackend) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    turns = [
        *HELLO,
        Message("assistant", None, tool_calls=(call,)),
        Message("tool", "sunny", tool_call_id="call_1"),
    ]
    await backend.complete("tiny-chat", turns, Sampling(tools=(WEATHER,)))
    assert shown(backend)[-1] == (
        "<tools> get_weather <system> Be kind. <user> Say hello <assistant> <call> get_weather "
        '{"city": "Paris"} <tool> sunny <assistant>'
    )


def backend_over(monkeypatch: pytest.MonkeyPatch, model: str, **engine: Any) -> VLLMBackend:
    """A backend whose fake engine is built with `engine`'s fields."""
    build = classmethod(lambda cls, args: cls(args, **engine))
    monkeypatch.setattr(FakeEngine, "from_engine_args", build)
    return VLLMBackend(model)


async def test_a_template_without_tools_refuses_them(
    fake_vllm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_over(monkeypatch, "Org/Plain-Chat", chat_tokenizer=FakeTokenizer(False))
    assert not backend.capabilities.tools  # probed at start
    with pytest.raises(Unsupported, match="no tool-calling chat template") as err:
        await backend.complete("plain-chat", HELLO, Sampling(tools=(WEATHER,)))
    assert err.value.param == "tools"
    assert engine_of(backend).requests == []
    (answer,) = await backend.complete("plain-chat", HELLO, Sampling())
    assert answer.content == "w0-0 w0-1 w0-2"


async def test_the_template_is_probed_on_first_use_when_the_tokenizer_is_not_at_hand(
    fake_vllm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_over(monkeypatch, "Org/Tiny-Chat", tokenizer_at_hand=False)
    assert not backend.capabilities.tools  # not known yet
    engine_of(backend).answers = [CALL]
    (answer,) = await backend.complete("tiny-chat", HELLO, Sampling(tools=(WEATHER,)))
    assert answer.finish_reason == "tool_calls" and backend.capabilities.tools


async def test_tools_over_http_reach_vllm_and_come_back(backend: VLLMBackend) -> None:
    from ponder.config import Settings
    from ponder.proxy import create_app
    from tests.conftest import asgi_client

    engine_of(backend).answers = [CALL]
    body = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
    }
    async with asgi_client(create_app(Settings(), backend=backend)) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
