"""The batched engine: one llama.cpp context, one thread, every active sequence decoded together.

The engine owns `sequences` slots (llama.cpp sequence ids) in one KV cache. Its thread loops:
admit waiting sequences into free slots, put the next token of every generating sequence and
as much waiting prompt as fits into one batch, decode it, then sample each sequence's next
token from its own logits. Sequences join and leave between steps (continuous batching).

Prompts are shared, not recomputed. The samples of one job (a request's `n`) wait for the first
one to evaluate the prompt, then copy its KV cells (`seq_cp`) and each draw its own first token
from the same logits. A new sequence also starts from the longest prefix of its prompt that
any slot holds, live or finished, so a shared system prompt or a strategy's shared conversation
is evaluated once. A finished slot keeps its cells until it is reused, except that while other
sequences decode only the most recent `cache_budget` cached cells stay (in the unified cache
every cell in use is visited by every token's attention, if only to be masked).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ponder.backends.llamacpp.adaptive import AdaptiveSampler
from ponder.backends.llamacpp.jobs import (
    EngineStats,
    Failed,
    Finished,
    Job,
    SequenceParams,
    Sink,
    Text,
    TokenLogprob,
)
from ponder.backends.llamacpp.logprobs import log_softmax, token_entry
from ponder.backends.llamacpp.native import Batch, Context, Model, NativeError, Sampler
from ponder.backends.llamacpp.text import TextStream

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Seq:
    job: Job
    index: int
    params: SequenceParams
    text: TextStream
    state: Literal["waiting", "prefill", "follow", "generate"] = "waiting"
    slot: int = -1
    pending: list[int] = field(default_factory=list)
    """Prompt tokens still to evaluate."""
    next_token: int = -1
    generated: int = 0
    output: int = -1
    """Where this sequence's logits are in the batch being decoded (-1: none)."""
    sampler: Sampler | None = None
    adaptive: AdaptiveSampler | None = None
    """Set when this sequence picks its tokens by the adaptive rule (the sampler only shapes
    the logits then)."""
    followers: list[_Seq] = field(default_factory=list)


@dataclass(eq=False)
class _Slot:
    id: int
    seq: _Seq | None = None
    tokens: list[int] = field(default_factory=list)
    """The tokens whose KV cells this slot holds, at positions 0..len-1."""
    used: int = 0
    """The step it was last given to or given back by a sequence (least recently used goes
    first)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Engine:
    def __init__(
        self,
        model: Model,
        *,
        sequences: int,
        ctx_per_sequence: int,
        threads: int,
        batch_tokens: int = 512,
        prefix_cache: bool = True,
        cache_budget: int = 4096,
    ) -> None:
        self.model = model
        self.sequences = sequences
        self.ctx_per_sequence = ctx_per_sequence
        self.prefix_cache = prefix_cache
        self.cache_budget = cache_budget
        """KV cells finished sequences may keep while others decode (all of them when idle)."""
        self._ctx = Context(
            model,
            n_ctx=ctx_per_sequence * sequences,
            n_seq=sequences,
            n_batch=batch_tokens,
            threads=threads,
        )
        self._batch = Batch(batch_tokens)
        self._slots = [_Slot(i) for i in range(sequences)]
        self._waiting: deque[_Seq] = deque()
        self._inbox: list[Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self._steps = 0
        self._decoded = 0
        self._prompt_tokens = 0
        self._reused = 0
        self._histogram = [0] * (sequences + 1)
        self._positions = tuple(0 for _ in range(sequences))
        self._clear_requests: list[threading.Event] = []
        self._thread = threading.Thread(target=self._run, name="ponder-llama", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------------

    def submit(self, prompt: list[int], params: Sequence[SequenceParams], sink: Sink) -> Job:
        if not prompt:
            raise ValueError("an empty prompt")
        job = Job(prompt, params, sink, self.wake)
        with self._cond:
            if self._closing:
                raise NativeError("the embedded engine is closed")
            self._inbox.append(job)
            self._cond.notify()
        return job

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def stats(self) -> EngineStats:
        with self._cond:
            live = [s for s in self._slots if s.seq is not None]
            return EngineStats(
                sequences=self.sequences,
                free_sequences=self.sequences - len(live),
                waiting=len(self._waiting) + sum(len(j.params) for j in self._inbox),
                kv_cells_live=sum(len(s.tokens) for s in live),
                kv_cells_cached=sum(len(s.tokens) for s in self._slots if s.seq is None),
                kv_tokens=tuple(len(s.tokens) for s in self._slots),
                kv_positions=self._positions,
                steps=self._steps,
                decoded_tokens=self._decoded,
                prompt_tokens=self._prompt_tokens,
                prompt_tokens_reused=self._reused,
                batch_sequences=tuple(self._histogram),
            )

    def clear_cache(self, timeout: float = 30.0) -> None:
        """Forget the cells finished sequences kept (they are recomputed when needed). Blocks
        until the engine thread has done it, at most `timeout` seconds (one decode step)."""
        done = threading.Event()
        with self._cond:
            self._clear_requests.append(done)
            self._cond.notify()
        done.wait(timeout)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ---- the engine thread -----------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self._waiting) or any(s.seq is not None for s in self._slots)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (
                        self._inbox or self._busy() or self._closing or self._clear_requests
                    ):
                        self._positions = tuple(
                            self._ctx.seq_pos_max(s.id) + 1 for s in self._slots
                        )
                        self._cond.wait()
                    if self._closing:
                        break
                    jobs, self._inbox = self._inbox, []
                    cleared, self._clear_requests = self._clear_requests, []
                if cleared:
                    self._forget_cache()
                    for done in cleared:
                        done.set()
                for job in jobs:
                    self._waiting.extend(
                        _Seq(job, i, p, TextStream(p.stop)) for i, p in enumerate(job.params)
                    )
                self._step()
        except Exception as exc:
            log.exception("the embedded engine failed")
            self._fail_all(NativeError(f"the embedded engine failed: {exc}"))
        finally:
            self._fail_all(NativeError("the embedded engine is closed"))
            self._batch.close()
            self._ctx.close()

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._trim_cache()
        added = self._fill_batch()
        if not added:
            return
        try:
            self._ctx.decode(self._batch)
        except NativeError as exc:
            for job in {seq.job for seq, _ in added}:
                self._fail(job, exc)
            return
        self._steps += 1
        for seq, tokens in added:
            self._slots[seq.slot].tokens.extend(tokens)
        advanced = len({seq.slot for seq, _ in added})
        with self._cond:
            self._histogram[min(advanced, self.sequences)] += 1
        for seq, _ in added:
            if seq.output >= 0:
                self._sample(seq, seq.output)

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.seq is not None and slot.seq.job.cancelled:
                self._release(slot.seq)
        if any(s.job.cancelled for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if not s.job.cancelled)

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self._slots if s.seq is None]
            if not free:
                return
            seq = self._waiting.popleft()
            leader = next(
                (
                    s.seq
                    for s in self._slots
                    if s.seq is not None and s.seq.job is seq.job and s.seq.state == "prefill"
                ),
                None,
            )
            if leader is not None:  # a sibling is evaluating the prompt: take its cells after
                slot = min(free, key=lambda s: (len(s.tokens), s.used))
                self._ctx.seq_rm(slot.id)
                slot.tokens = []
                self._place(seq, slot, "follow")
                leader.followers.append(seq)
                continue
            self._place(seq, self._prefix_slot(seq.job.prompt, free), "prefill")

    def _trim_cache(self) -> None:
        """While sequences run, cells kept from finished ones cost attention in every step
        (the cache is unified): keep at most `cache_budget` of them, the most recently used."""
        cached = sorted(
            (s for s in self._slots if s.seq is None and s.tokens), key=lambda s: -s.used
        )
        kept = 0
        for slot in cached:
            kept += len(slot.tokens)
            if kept > self.cache_budget:
                self._ctx.seq_rm(slot.id)
                slot.tokens = []

    def _prefix_slot(self, prompt: list[int], free: list[_Slot]) -> _Slot:
        """A free slot for `prompt`, holding the longest prefix of it the cache has. At least
        the prompt's last token is evaluated, for the logits of the first new token."""
        limit = len(prompt) - 1
        shared = {s.id: min(common_prefix(s.tokens, prompt), limit) for s in self._slots}
        slot = max(free, key=lambda s: (shared[s.id], -s.used))
        source = max(self._slots, key=lambda s: shared[s.id])
        if source is not slot and shared[source.id] > shared[slot.id]:
            n = shared[source.id]
            self._ctx.seq_copy(source.id, slot.id, n)
            slot.tokens = source.tokens[:n]
        else:
            n = shared[slot.id]
            self._ctx.seq_rm(slot.id, n, -1)
            del slot.tokens[n:]
        self._reused += n
        return slot

    def _place(self, seq: _Seq, slot: _Slot, state: Literal["prefill", "follow"]) -> None:
        seq.slot, seq.state = slot.id, state
        seq.pending = seq.job.prompt[len(slot.tokens) :] if state == "prefill" else []
        if state == "prefill":
            seq.job.note_cached(len(slot.tokens))
        slot.seq, slot.used = seq, self._steps
        adaptive = seq.params.adaptive
        try:
            seq.sampler = Sampler(self.model, seq.params.sampler, select=adaptive is None)
        except NativeError as exc:
            self._fail(seq.job, exc)
            return
        if adaptive is not None:
            seq.adaptive = AdaptiveSampler(adaptive, seq.params.sampler.seed)

    def _fill_batch(self) -> list[tuple[_Seq, list[int]]]:
        """The next batch: one token per generating sequence, then prompt chunks. Returns each
        sequence in it with the tokens it adds to its slot's cells."""
        batch = self._batch
        batch.clear()
        added: list[tuple[_Seq, list[int]]] = []
        live = [s.seq for s in self._slots if s.seq is not None]
        for seq in live:
            seq.output = -1
            if seq.state == "generate":
                pos = len(self._slots[seq.slot].tokens)
                seq.output = batch.add(seq.next_token, pos, seq.slot, True)
                added.append((seq, [seq.next_token]))
        for seq in sorted((s for s in live if s.state == "prefill"), key=lambda s: s.slot):
            room = batch.capacity - batch.n
            if room <= 0:
                break
            chunk, seq.pending = seq.pending[:room], seq.pending[room:]
            start = len(self._slots[seq.slot].tokens)
            for i, token in enumerate(chunk):
                last = not seq.pending and i == len(chunk) - 1
                index = batch.add(token, start + i, seq.slot, last)
                if last:
                    seq.output = index
            self._prompt_tokens += len(chunk)
            added.append((seq, chunk))
        return added

    def _sample(self, seq: _Seq, output: int) -> None:
        if seq.state == "prefill":
            seq.state = "generate"
            source = self._slots[seq.slot]
            for follower in seq.followers:
                if follower.job.cancelled or follower.sampler is None:
                    continue
                self._ctx.seq_copy(source.id, follower.slot, len(source.tokens))
                self._slots[follower.slot].tokens = list(source.tokens)
                self._reused += len(source.tokens)
                follower.job.note_cached(len(seq.job.prompt))  # evaluated by another job
                follower.state = "generate"
                self._accept(follower, output)
            seq.followers = []
        self._accept(seq, output)

    def _accept(self, seq: _Seq, output: int) -> None:
        assert seq.sampler is not None
        top = seq.params.top_logprobs
        logprobs = None if top is None else log_softmax(self._ctx.logits_array(output))
        if seq.adaptive is None:
            token = seq.sampler.sample(self._ctx, output)
        else:
            token, _ = seq.adaptive.choose(seq.sampler.shaped(self._ctx, output))
            seq.sampler.accept(token)
        seq.generated += 1
        self._decoded += 1
        if self.model.is_eog(token):
            self._finish(seq, "stop")
            return
        if logprobs is not None and top is not None:
            entry = token_entry(logprobs, token, top, self.model.piece)
            seq.job.emit(TokenLogprob(seq.index, entry))
        text = seq.text.push(self.model.piece(token))
        if text:
            seq.job.emit(Text(seq.index, text))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= seq.params.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: _Seq, reason: Literal["stop", "length"]) -> None:
        rest = seq.text.flush()
        if rest:
            seq.job.emit(Text(seq.index, rest))
        actions = None if seq.adaptive is None else dict(seq.adaptive.counts)
        seq.job.emit(Finished(seq.index, reason, seq.generated, seq.text.matched, actions))
        self._release(seq)

    def _release(self, seq: _Seq) -> None:
        slot = self._slots[seq.slot]
        slot.seq, slot.used = None, self._steps
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        if not self.prefix_cache:
            self._ctx.seq_rm(slot.id)
            slot.tokens = []

    def _fail(self, job: Job, error: BaseException) -> None:
        job.cancelled = True
        for slot in self._slots:
            if slot.seq is not None and slot.seq.job is job:
                seq = slot.seq
                self._release(seq)
                self._ctx.seq_rm(slot.id)
                slot.tokens = []
        self._waiting = deque(s for s in self._waiting if s.job is not job)
        job.emit(Failed(error))

    def _fail_all(self, error: BaseException) -> None:
        jobs = {s.seq.job for s in self._slots if s.seq is not None}
        jobs |= {s.job for s in self._waiting}
        with self._cond:
            jobs |= set(self._inbox)
            self._inbox = []
        for job in jobs:
            if not job.cancelled:
                self._fail(job, error)

    def _forget_cache(self) -> None:
        for slot in self._slots:
            if slot.seq is None and slot.tokens:
                self._ctx.seq_rm(slot.id)
                slot.tokens = []
