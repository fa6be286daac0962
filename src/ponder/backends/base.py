"""The Backend protocol: what every model engine offers Ponder.

A call may ask to continue the assistant's answer from a given start rather than begin a new
one: `continuation_call` says so in the call's messages and `Sampling.extra`, and backends that
can (`Capabilities.continuation`) read it back with `continued_prefix`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponder.errors import InvalidRequest
from ponder.types import Completion, Delta, Message, Sampling

CONTINUE_FINAL_MESSAGE = "continue_final_message"
"""The `Sampling.extra` field that asks a backend to continue the last message, an assistant
turn, rather than start a new one (vLLM's OpenAI server takes the same field)."""
ADD_GENERATION_PROMPT = "add_generation_prompt"
"""Sent false with a continuation, as vLLM's OpenAI server wants it."""
ADAPTIVE_SAMPLING = "ponder_adaptive_sampling"
"""The `Sampling.extra` field that asks a backend with `Capabilities.adaptive_sampling` to
choose each token by the entropix-style adaptive rule: an object of the rule's settings
(`AdaptiveSettings`; {} takes the defaults)."""


CLIENT_KEY: ContextVar[str | None] = ContextVar("ponder_client_key", default=None)
"""The key the request's client sent, where the server passes it on to the upstream
(`PONDER_UPSTREAM_KEY_FROM_CLIENT`): set per request by the front end, read by every call the
request makes (its tasks inherit it)."""


class AdaptiveSettings(BaseModel):
    """The entropix-style rule's settings: the thresholds that split its four cases, and how
    each case samples (`ponder.backends.llamacpp.adaptive`). The one definition, for the
    `entropy_decoding` strategy's options and for the backend that reads `ADAPTIVE_SAMPLING`
    from a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entropy_threshold: float = Field(
        1.0, ge=0, le=20, description="Entropy (nats) from which a step counts as uncertain"
    )
    varentropy_threshold: float = Field(
        2.0,
        ge=0,
        le=100,
        description="Varentropy (nats squared) from which a step's candidates count as uneven",
    )
    explore_temperature: float = Field(
        1.0, gt=0, le=3, description="Temperature of high-entropy, low-varentropy steps"
    )
    branch_top_k: int = Field(
        5, ge=1, le=100, description="Candidates a low-entropy, high-varentropy step draws from"
    )
    branch_temperature: float = Field(
        0.7, gt=0, le=3, description="Temperature among those candidates"
    )
    resample_temperature: float = Field(
        1.3, gt=0, le=3, description="Temperature of high-entropy, high-varentropy steps"
    )
    resample_top_p: float = Field(
        0.9, gt=0, le=1, description="Top-p cut of high-entropy, high-varentropy steps"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        if isinstance(value, bool | str):
            raise ValueError("must be a number")
        return value


def continuation_call(
    messages: Sequence[Message], prefix: str, sampling: Sampling
) -> tuple[list[Message], Sampling]:
    """The messages and sampling of a call that continues an assistant turn beginning with
    `prefix`: the conversation with `prefix` as its last, open assistant message, and the
    continuation fields in `extra`. The backend answers with what follows `prefix` only."""
    extra = {**sampling.extra, CONTINUE_FINAL_MESSAGE: True, ADD_GENERATION_PROMPT: False}
    return [*messages, Message("assistant", prefix)], sampling.with_(extra=extra)


def continued_prefix(messages: Sequence[Message], sampling: Sampling) -> str | None:
    """The assistant text a call asks the backend to continue (see `continuation_call`), or
    None for an ordinary call. Raises InvalidRequest when the last message is not an
    assistant one."""
    if not sampling.extra.get(CONTINUE_FINAL_MESSAGE):
        return None
    if not messages or messages[-1].role != "assistant":
        raise InvalidRequest(
            f"{CONTINUE_FINAL_MESSAGE} needs the last message to be an assistant one",
            param="messages",
        )
    return messages[-1].text


def logit_bias(sampling: Sampling, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """The request's `logit_bias` ({"token id": bias from -100 to 100}) as the sampler takes it."""
    raw = sampling.extra.get("logit_bias")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise InvalidRequest("logit_bias must be an object", param="logit_bias")
    out = []
    for key, value in raw.items():
        token = int(key) if isinstance(key, str) and key.isdigit() else -1
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias: {key!r} is not a token id of this model (0 to {n_vocab - 1})",
                param="logit_bias",
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 100:
            raise InvalidRequest(
                f"logit_bias: the bias of token {key} must be a number from -100 to 100",
                param="logit_bias",
            )
        out.append((token, float(value)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Capabilities:
    native_n: bool = False
    """One call can return several independent samples."""
    logprobs: bool = False
    tools: bool = False
    """The engine itself understands `tools` and returns structured `tool_calls`."""
    max_concurrency: int = 16
    """How many calls are worth running at once; strategies bound their fan-out by it."""
    json_schema: bool = False
    """The engine constrains decoding to `response_format` (json_object and json_schema), so
    what it writes has the document's shape (the `json` plugin still validates it)."""
    context_window: int | None = None
    """Tokens one call may hold, prompt and answer together; None when the backend does not
    know (plugins that fit long inputs into it then take it as an option)."""
    continuation: bool = False
    """The backend continues an assistant turn from a given prefix (`continuation_call`),
    generating only what follows it."""
    thinking: bool = False
    """The model thinks between `<think>` and `</think>` of its own accord (its chat template
    has that format)."""
    adaptive_sampling: bool = False
    """The engine reads each step's logits and can choose every token by the entropix-style
    adaptive rule (`Sampling.extra[ADAPTIVE_SAMPLING]`)."""


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities

    async def models(self) -> list[str]:
        """Model ids this backend serves."""
        ...

    def serves(self, model: str) -> bool:
        """Whether `model` may be sent to this backend (remote backends accept any name)."""
        ...

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        """Return `n` choices. Raises `ponder.errors.BackendError` (or a subclass) on failure."""
        ...

    def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        """Yield deltas as tokens arrive; exactly one delta with `finish_reason` per choice,
        and a last delta with the call's `usage`."""
        ...

    async def ready(self) -> bool:
        """True when the backend can answer now."""
        ...

    async def aclose(self) -> None: ...
