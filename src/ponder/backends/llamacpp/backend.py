"""`embedded` backend: a GGUF model run in-process by llama.cpp, on the batched engine.

The model comes from Ponder's catalog of offline models (the best one installed by default) or
from a GGUF path. Chats are rendered with the model's own chat template, tools included where
the template knows them, and tokenized here; the engine decodes every request's samples, and
those of concurrent requests, together. A caller that goes away (cancelled task, closed stream,
deadline) drops its sequences at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ponder import catalog
from ponder.backends.assemble import Assembler
from ponder.backends.base import (
    ADAPTIVE_SAMPLING,
    AdaptiveSettings,
    Capabilities,
    continued_prefix,
    logit_bias,
)
from ponder.backends.chat_template import ChatTemplate, RenderedPrompt, offered_tools
from ponder.backends.llamacpp.engine import Engine
from ponder.backends.llamacpp.jobs import (
    EngineStats,
    Event,
    Failed,
    Finished,
    SequenceParams,
    Text,
    TokenLogprob,
)
from ponder.backends.llamacpp.native import Model, NativeError, SamplerSettings
from ponder.backends.tool_calls import ToolCallParser, closing_deltas
from ponder.errors import BackendError, BackendUnavailable, InvalidRequest
from ponder.types import (
    Completion,
    Delta,
    FinishReason,
    Message,
    Sampling,
    Usage,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
"""Tokens an answer may take when the request sets no `max_tokens` (less where the context
is shorter)."""
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.95
"""Sampling where the request sets none: focused, as small models answer best."""


def sample_seeds(seed: int | None, n: int) -> list[int]:
    """One seed per sample: reproducible when the client gave a seed, fresh otherwise."""
    if seed is None:
        return [random.getrandbits(31) for _ in range(n)]
    return [(seed + i) % 2**31 for i in range(n)]


def adaptive_settings(sampling: Sampling) -> AdaptiveSettings | None:
    """The adaptive sampling the request asks for (`ADAPTIVE_SAMPLING`), if any."""
    raw = sampling.extra.get(ADAPTIVE_SAMPLING)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{ADAPTIVE_SAMPLING} must be an object", param=ADAPTIVE_SAMPLING)
    try:
        return AdaptiveSettings.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in (ADAPTIVE_SAMPLING, *error["loc"]))
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        raise InvalidRequest(f"{where}: {message}", param=where) from None


def output_grammar(sampling: Sampling) -> str | None:
    """The GBNF grammar that `response_format` asks the output to follow, if any."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    fmt = sampling.response_format or {}
    if fmt.get("type") == "json_object":
        return str(JSON_GBNF)
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        try:
            return str(json_schema_to_gbnf(json.dumps(schema)))
        except (ValueError, KeyError, TypeError, RecursionError, AssertionError) as exc:
            raise InvalidRequest(
                f"the JSON schema cannot be turned into a grammar: {exc}",
                param="response_format",
            ) from exc
    return None


class EmbeddedBackend:
    name = "embedded"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        model_id: str | None = None,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        sequences: int = 8,
        prefix_cache: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        """`model`: a catalog id or a GGUF path (default: the best catalog model installed).
        `n_ctx`: the context of each sequence; `sequences`: how many decode at once."""
        resolved = catalog.resolve(str(model) if model is not None else None, cache_dir)
        self.model_id = model_id or resolved.model_id
        self.ctx_per_sequence = n_ctx
        threads = n_threads or os.cpu_count() or 1
        log.info(
            "loading %s from %s (%d sequences of %d tokens, %d threads)",
            self.model_id,
            resolved.path,
            sequences,
            n_ctx,
            threads,
        )
        self._model = Model(resolved.path)
        self._template = ChatTemplate(
            self._model.metadata("tokenizer.chat_template"),
            bos_token=self._model.token_text(self._model.bos),
            eos_token=self._model.token_text(self._model.eos),
            model_id=self.model_id,
        )
        self._engine: Engine | None = Engine(
            self._model,
            sequences=sequences,
            ctx_per_sequence=n_ctx,
            threads=threads,
            prefix_cache=prefix_cache,
        )
        self.capabilities = Capabilities(
            native_n=True,
            logprobs=True,
            tools=self._template.supports_tools,
            max_concurrency=sequences,
            json_schema=True,
            context_window=n_ctx,
            continuation=True,
            thinking="<think>" in (self._template.template or ""),
            adaptive_sampling=True,
        )

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        return [self.model_id]

    def serves(self, model: str) -> bool:
        return model == self.model_id

    async def ready(self) -> bool:
        return self._engine is not None

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)
            self._model.close()

    def engine_stats(self) -> EngineStats | None:
        return self._engine.stats() if self._engine is not None else None

    def clear_cache(self) -> None:
        if self._engine is not None:
            self._engine.clear_cache()

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
        engine = self._engine
        if engine is None:
            raise BackendUnavailable("the embedded backend is closed")
        prompt, params, names = self._prepare(messages, sampling, n)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            job = engine.submit(prompt, params, sink)
        except NativeError as exc:
            raise BackendUnavailable(str(exc)) from exc
        tools = [ToolCallParser(names) if names else None for _ in range(n)]
        # each choice's token log-probabilities not yet sent: they go with its next text, or
        # with its finish (a stream's chunk carries the logprobs of the tokens it holds)
        pending: list[list[dict[str, Any]]] = [[] for _ in range(n)]

        def logprobs(index: int) -> dict[str, Any] | None:
            entries, pending[index] = pending[index], []
            return {"content": entries} if entries else None

        remaining, completion_tokens = n, 0
        try:
            while remaining:
                event = await events.get()
                if isinstance(event, Failed):
                    raise BackendError(f"the embedded model failed: {event.error}")
                if isinstance(event, TokenLogprob):
                    pending[event.index].append(event.entry)
                    continue
                parser = tools[event.index]
                if isinstance(event, Text):
                    text = parser.feed(event.text) if parser else event.text
                    if text:
                        yield Delta(index=event.index, content=text, logprobs=logprobs(event.index))
                    continue
                assert isinstance(event, Finished)
                reason: FinishReason = event.reason
                if parser is not None:
                    closing, called = closing_deltas(parser, event.index)
                    for delta in closing:
                        yield delta
                    if called:
                        reason = "tool_calls"
                yield Delta(
                    index=event.index,
                    finish_reason=reason,
                    logprobs=logprobs(event.index),
                    stop_sequence=event.stop_sequence if reason == "stop" else None,
                    completion_tokens=event.tokens,
                    sampling_actions=event.actions,
                )
                completion_tokens += event.tokens
                remaining -= 1
            yield Delta(usage=Usage(len(prompt), completion_tokens, job.cached_tokens or 0))
        finally:
            if remaining:
                job.cancel()

    def prompt_tokens(self, messages: Sequence[Message], sampling: Sampling) -> int:
        """How many tokens this prompt takes on this model, rendered and tokenized as a call
        sends it (for the Messages API's count_tokens); not refused when over the context."""
        return len(self._prompt(messages, sampling)[0])

    # ---- internals -------------------------------------------------------------------------

    def _prompt(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> tuple[list[int], RenderedPrompt]:
        """The prompt's tokens, and its rendering with the model's chat template. A
        continuation (`continued_prefix`) is the conversation before its last message,
        rendered with the generation prompt, then the tokens of that assistant message's text,
        with no end of turn: the model goes on from there."""
        prefix = continued_prefix(messages, sampling)
        chat = messages if prefix is None else messages[:-1]
        rendered = self._template.render(chat, sampling.tools, sampling.tool_choice)
        # as llama.cpp's own chat completion does: specials are added unless the template
        # wrote them itself
        prompt = self._model.tokenize(rendered.text, add_special=not rendered.added_special)
        if prefix:
            # tokenized apart, so that the rendered chat's tokens (and cache) are the same
            # whatever the prefix
            prompt += self._model.tokenize(prefix, add_special=False)
        return prompt, rendered

    def _prepare(
        self, messages: Sequence[Message], sampling: Sampling, n: int
    ) -> tuple[list[int], list[SequenceParams], list[str]]:
        """The prompt's tokens (`_prompt`), each sample's settings, and the names of the tools
        offered in the prompt (the answer may call them). Refuses what cannot be honoured."""
        prompt, rendered = self._prompt(messages, sampling)
        room = self.ctx_per_sequence - len(prompt)
        if room <= 0:
            raise InvalidRequest(
                f"the prompt has {len(prompt)} tokens; the embedded model's context is "
                f"{self.ctx_per_sequence} tokens per sequence (PONDER_EMBEDDED_CTX)",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = min(sampling.max_tokens or DEFAULT_MAX_TOKENS, room)
        grammar = output_grammar(sampling)
        biases = logit_bias(sampling, self._model.n_vocab)
        adaptive = adaptive_settings(sampling)
        temperature = DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature
        params = [
            SequenceParams(
                max_tokens=max_tokens,
                stop=sampling.stop,
                top_logprobs=(sampling.top_logprobs or 0) if sampling.logprobs else None,
                adaptive=adaptive,
                sampler=SamplerSettings(
                    temperature=temperature,
                    top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
                    presence_penalty=sampling.presence_penalty or 0.0,
                    frequency_penalty=sampling.frequency_penalty or 0.0,
                    seed=seed,
                    grammar=grammar,
                    logit_bias=biases,
                ),
            )
            for seed in sample_seeds(sampling.seed, n)
        ]
        names = [
            str((tool.get("function") or {}).get("name"))
            for tool in offered_tools(sampling.tools, sampling.tool_choice)
        ]
        return prompt, params, names if rendered.tools else []
