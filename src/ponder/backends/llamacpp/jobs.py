"""What the batched engine takes and gives: a job (a prompt and its samples' settings), the
events it reports from its thread through the job's sink, and its counters."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ponder.backends.llamacpp.adaptive import AdaptiveSettings
from ponder.backends.llamacpp.native import SamplerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SequenceParams:
    max_tokens: int
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    """Report each generated token's log-probability with this many alternatives (None: no
    log-probabilities at all)."""
    adaptive: AdaptiveSettings | None = None
    """Choose each token by the entropix-style adaptive rule (`adaptive`) instead of the
    sampler chain's temperature, top-k and top-p; its bias, penalties and grammar still
    apply."""


# ---- what the engine reports, from its thread, through a job's sink ----------------------


@dataclass(frozen=True, slots=True)
class Text:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log-probability, as an OpenAI `logprobs.content` entry; sent
    before the text the token adds (which a stop string may hold back, or end)."""

    index: int
    entry: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Finished:
    index: int
    reason: Literal["stop", "length"]
    tokens: int
    """Tokens this sequence generated (its end-of-generation token included)."""
    stop_sequence: str | None = None
    """The stop string that ended it, if one did."""
    actions: Mapping[str, int] | None = None
    """With adaptive sampling: how many tokens each action chose."""


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException


Event = Text | TokenLogprob | Finished | Failed
Sink = Callable[[Event], None]


class Job:
    """One prompt and its samples. `cancel()` may be called from any thread: the engine drops
    the job's sequences at its next step."""

    def __init__(
        self,
        prompt: list[int],
        params: Sequence[SequenceParams],
        sink: Sink,
        wake: Callable[[], None],
    ) -> None:
        self.prompt = prompt
        self.params = tuple(params)
        self.sink = sink
        self.cancelled = False
        self.cached_tokens: int | None = None
        """Prompt tokens the job's first sequence found in the cache (set by the engine)."""
        self._wake = wake
        """Tells the engine to look at its jobs again."""

    def note_cached(self, tokens: int) -> None:
        """Record, once, how much of the prompt the cache served."""
        if self.cached_tokens is None:
            self.cached_tokens = min(tokens, len(self.prompt))

    def cancel(self) -> None:
        self.cancelled = True
        self._wake()

    def emit(self, event: Event) -> None:
        """Reports `event` to the job's owner, unless it has gone; an owner that cannot take
        it any more (its event loop closed) is treated as gone."""
        if self.cancelled and not isinstance(event, Failed):
            return
        try:
            self.sink(event)
        except Exception:  # one gone caller must not stop the engine
            log.warning("dropping a job whose caller cannot take its results", exc_info=True)
            self.cancelled = True


@dataclass(frozen=True, slots=True)
class EngineStats:
    sequences: int
    free_sequences: int
    waiting: int
    kv_cells_live: int
    """KV positions held by running sequences (shared cells counted once per sequence)."""
    kv_cells_cached: int
    """KV positions kept by finished sequences for prefix reuse."""
    kv_tokens: tuple[int, ...]
    """Positions each sequence id holds, by the engine's own account."""
    kv_positions: tuple[int, ...]
    """Positions each sequence id holds as llama.cpp itself reports, read when last idle."""
    steps: int
    decoded_tokens: int
    prompt_tokens: int
    """Prompt tokens evaluated."""
    prompt_tokens_reused: int
    """Prompt tokens taken from cells already in the cache instead of being evaluated."""
    batch_sequences: tuple[int, ...]
    """batch_sequences[k]: decode steps that advanced k sequences at once."""
