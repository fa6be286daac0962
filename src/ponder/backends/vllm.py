"""`vllm` backend: a model served in-process by vLLM's async engine (vLLM >= 0.8, a GPU).

A request's `n` samples are one engine request. The chat is rendered with the model's own
template, with the request's tools where the template shows tools; tool calls are read back
from the text as the embedded engine reads them (`tool_calls.ToolCallParser`).
`response_format` becomes vLLM's structured outputs, `logit_bias` its sampler's, and the
engine's `max_model_len` the backend's context window.

vLLM is imported only when the backend is built; the pure functions that turn Ponder's sampling
into vLLM's parameters and vLLM's outputs into deltas (`vllm_outputs`) need no vLLM.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Sequence,
)
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from ponder.backends.base import Capabilities, continued_prefix, logit_bias
from ponder.backends.chat_template import offered_tools, renders_tools, template_messages
from ponder.backends.tool_calls import split_calls
from ponder.backends.vllm_outputs import (
    CumulativeDeltas,
    ToolCallDeltas,
    cached_tokens,
    finish_of,
    logprobs_content,
    sampling_kwargs,
    structured_output,
    top_logprobs,
)
from ponder.backends.wire import text_chat
from ponder.errors import BackendError, BackendUnavailable, InvalidRequest, Unsupported
from ponder.types import Completion, Delta, Message, Sampling, Usage

log = logging.getLogger(__name__)


def default_model_id(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1].lower()


class VLLMBackend:
    name = "vllm"
    capabilities = Capabilities(
        native_n=True, logprobs=True, tools=False, max_concurrency=256, continuation=True
    )
    """`tools` is the model's chat template's, known once its tokenizer is (`_renders_tools`)."""

    def __init__(
        self, model: str, *, model_id: str | None = None, gpu_memory_utilization: float = 0.85
    ) -> None:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            from vllm.sampling_params import RequestOutputKind
        except ImportError as exc:
            raise ValueError("the vllm backend needs vLLM: pip install 'ponder[vllm]'") from exc
        self.model_id = model_id or default_model_id(model)
        self._sampling_params: Any = SamplingParams
        self._final_only: Any = RequestOutputKind.FINAL_ONLY
        self._structured = _structured_outputs()
        self.capabilities = replace(self.capabilities, json_schema=self._structured is not None)
        log.info("starting vLLM for %s (%s)", self.model_id, model)
        args = AsyncEngineArgs(model=model, gpu_memory_utilization=gpu_memory_utilization)
        # AsyncLLMEngine is the v1 AsyncLLM in every recent release
        self._engine: Any = AsyncLLMEngine.from_engine_args(args)
        self._tokenizer: Any = None
        self._tools: bool | None = None
        tokenizer = getattr(self._engine, "tokenizer", None)  # where the engine has it at hand
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a TokenizerGroup's (vLLM < 0.10)
        if hasattr(tokenizer, "apply_chat_template"):
            self._tokenizer = tokenizer
            self._renders_tools(tokenizer)
        config = getattr(self._engine, "model_config", None) or getattr(
            getattr(self._engine, "engine", None), "model_config", None
        )
        self._max_model_len: int | None = getattr(config, "max_model_len", None)
        self.capabilities = replace(self.capabilities, context_window=self._max_model_len)

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        return [self.model_id]

    def serves(self, model: str) -> bool:
        return model == self.model_id

    async def ready(self) -> bool:
        check = getattr(self._engine, "check_health", None)  # raises once the engine is dead
        try:
            if check is not None:
                await check()
        except Exception:  # any failure of the health check means "not ready"
            log.exception("vLLM health check failed")
            return False
        return self._engine is not None

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        result = engine.shutdown() if hasattr(engine, "shutdown") else None
        if inspect.isawaitable(result):
            await result

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        prompt, params, names = await self._prepare(messages, sampling, n, final_only=True)
        final: dict[int, Any] = {}
        cached = 0
        async with aclosing(self._outputs(prompt, params)) as outputs:
            async for out in outputs:
                final.update((c.index, c) for c in out.outputs)
                cached = cached_tokens(out)
        if sorted(final) != list(range(n)):
            raise BackendError(f"vLLM returned {len(final)} choices, {n} were asked for")
        top, choices = top_logprobs(sampling), []
        for i, c in sorted(final.items()):
            lp = None
            if top is not None and c.logprobs:
                lp = {"content": logprobs_content(c.token_ids, c.logprobs, top)}
            first = i == 0
            usage = Usage(
                len(prompt["prompt_token_ids"]) if first else 0,
                len(c.token_ids),
                cached if first else 0,
            )
            text, calls = split_calls(c.text, names) if names else (c.text, ())
            content = text if text or not calls else None  # as an assembled stream has it
            reason = "tool_calls" if calls else finish_of(c.finish_reason)
            choices.append(Completion(content, reason, calls, usage=usage, logprobs=lp))
        return choices

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        prompt, params, names = await self._prepare(messages, sampling, n, final_only=False)
        tracker = CumulativeDeltas(top_logprobs(sampling))
        calls = ToolCallDeltas(names) if names else None
        cached = 0
        async with aclosing(self._outputs(prompt, params)) as outputs:
            async for out in outputs:
                cached = cached_tokens(out)
                for delta in tracker.feed(out.outputs):
                    for sent in calls.feed(delta) if calls else (delta,):
                        yield sent
        for delta in tracker.finish(n):
            for sent in calls.feed(delta) if calls else (delta,):
                yield sent
        prompt_tokens = len(prompt["prompt_token_ids"])
        yield Delta(usage=Usage(prompt_tokens, tracker.completion_tokens, cached))

    async def prompt_tokens(self, messages: Sequence[Message], sampling: Sampling) -> int:
        """How many tokens this prompt takes on this model, rendered and tokenized as a call
        sends it (for the Messages API's count_tokens); not refused when over the context."""
        return len((await self._prompt(messages, sampling))[0])

    # ---- internals -------------------------------------------------------------------------

    async def _prompt(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> tuple[list[int], list[str]]:
        """The prompt's token ids, and the names of the tools it offers (the answer may call
        them). The chat is rendered with the model's template, with the tools `tool_choice`
        leaves where the template shows tools (else a request with tools is refused). A
        continuation (`continued_prefix`) is the chat before its last message with the
        generation prompt, then the tokens of that assistant message's text, with no end of
        turn."""
        prefix = continued_prefix(messages, sampling)
        turns = messages if prefix is None else messages[:-1]
        tokenizer = await self._loaded_tokenizer()
        offered = offered_tools(sampling.tools, sampling.tool_choice)
        native = self._renders_tools(tokenizer)
        if offered and not native:
            message = f"the model {self.model_id} has no tool-calling chat template"
            raise Unsupported(message, param="tools")
        chat = template_messages(turns, self.name) if native else text_chat(turns, self.name)
        try:
            text = tokenizer.apply_chat_template(
                chat,
                tokenize=False,
                add_generation_prompt=True,
                **({"tools": offered} if offered else {}),
            )
        except Exception as exc:  # jinja errors: a role the template refuses, a bad order...
            message = f"the chat template refused the messages: {exc}"
            raise InvalidRequest(message, param="messages") from exc
        # the template already wrote the special tokens (BOS...): do not add them twice
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        if prefix:
            ids += tokenizer.encode(prefix, add_special_tokens=False)
        return ids, [str(t["function"]["name"]) for t in offered]

    async def _loaded_tokenizer(self) -> Any:
        if self._engine is None:
            raise BackendUnavailable("the vllm backend is closed")
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()  # a coroutine before vLLM 0.11
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        return self._tokenizer

    def _renders_tools(self, tokenizer: Any) -> bool:
        """Whether the model's chat template shows it tools (probed once; `capabilities`
        says so from then on)."""
        if self._tools is None:

            def render(chat: list[dict[str, Any]], tools: list[dict[str, Any]]) -> object:
                return tokenizer.apply_chat_template(
                    chat, tools=tools, tokenize=False, add_generation_prompt=True
                )

            # any failure to render the probe means the template cannot be relied on for tools
            self._tools = renders_tools(render, (Exception,))
            self.capabilities = replace(self.capabilities, tools=self._tools)
        return self._tools

    async def _prepare(
        self, messages: Sequence[Message], sampling: Sampling, n: int, *, final_only: bool
    ) -> tuple[dict[str, list[int]], Any, list[str]]:
        """The token prompt and tools offered (`_prompt`), and `SamplingParams`, of one call."""
        sampling_kwargs(sampling, n)  # refuse what is unsupported before any work
        constraint = self._constraint(sampling)
        ids, names = await self._prompt(messages, sampling)
        room = None if self._max_model_len is None else self._max_model_len - len(ids)
        if room is not None and room <= 0:
            message = f"the prompt has {len(ids)} tokens, the context {self._max_model_len}"
            raise InvalidRequest(message, param="messages", code="context_length_exceeded")
        kwargs = sampling_kwargs(sampling, n, default_max_tokens=room)
        if final_only:
            kwargs["output_kind"] = self._final_only
        if biases := logit_bias(sampling, len(self._tokenizer)):
            kwargs["logit_bias"] = dict(biases)
        kwargs.update(constraint)
        try:
            params = self._sampling_params(**kwargs)
        except ValueError as exc:  # vLLM checks ranges and combinations
            raise InvalidRequest(str(exc)) from exc
        return {"prompt_token_ids": ids}, params, names

    def _constraint(self, sampling: Sampling) -> dict[str, Any]:
        """The `SamplingParams` keyword that constrains decoding to `response_format` (none for
        free text); refuses a format this vLLM cannot constrain to, or a constraint it rejects."""
        structure = structured_output(sampling)
        if structure is None:
            return {}
        if self._structured is None:
            message = "this vLLM cannot constrain the output to response_format"
            raise Unsupported(message, param="response_format")
        field_name, params = self._structured
        try:
            return {field_name: params(**structure)}
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="response_format") from exc

    async def _outputs(
        self, prompt: dict[str, list[int]], params: Any
    ) -> AsyncGenerator[Any, None]:
        """The engine's `RequestOutput`s for one request; aborts it if the caller stops early."""
        request_id = f"ponder-{uuid.uuid4().hex}"
        engine = self._engine
        generator = engine.generate(prompt=prompt, sampling_params=params, request_id=request_id)
        done = False
        try:
            while True:
                try:
                    out = await anext(generator)
                except StopAsyncIteration:
                    done = True
                    return
                except ValueError as exc:  # request validation
                    raise InvalidRequest(str(exc)) from exc
                except Exception as exc:  # the engine's boundary: report, never leak
                    if "Dead" in type(exc).__name__:  # EngineDeadError, AsyncEngineDeadError
                        raise BackendUnavailable("the vLLM engine is dead") from exc
                    raise BackendError(f"vLLM generation failed: {type(exc).__name__}") from exc
                yield out
        finally:
            if not done:
                await _abort(engine, generator, request_id)


def _structured_outputs() -> tuple[str, Any] | None:
    """The `SamplingParams` field and class that constrain decoding to a JSON schema in the
    installed vLLM: `structured_outputs` (0.11 on), `guided_decoding` before; None: neither."""
    import vllm.sampling_params as params

    for field_name, name in (
        ("structured_outputs", "StructuredOutputsParams"),
        ("guided_decoding", "GuidedDecodingParams"),
    ):
        if (cls := getattr(params, name, None)) is not None:
            return field_name, cls
    return None


async def _abort(engine: Any, generator: Any, request_id: str) -> None:
    """Stop a request whose caller went away (best effort: it may have ended already)."""
    try:
        await generator.aclose()  # vLLM v1 aborts the request when its generator closes
        result = engine.abort(request_id) if hasattr(engine, "abort") else None
        if inspect.isawaitable(result):
            await result
    except Exception:  # nothing is lost if the request was already gone
        log.warning("aborting vLLM request %s failed", request_id, exc_info=True)
