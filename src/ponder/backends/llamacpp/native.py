"""Typed wrappers over the parts of llama.cpp's C API (through `llama_cpp`'s ctypes bindings)
that the batched engine uses: a model, a context with one KV cache shared by many sequences,
a batch, and per-sequence sampler chains.

Everything here runs on the engine's one thread, except `Model`'s tokenizer functions, which
only read the vocabulary and are safe from any thread.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("ponder.llama_cpp")
_GGML_ERROR = 4  # ggml_log_level: none, debug, info, warn, error, cont


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _route_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """llama.cpp's own reports (model loading, tensor layout...) go to Ponder's logging: its
    errors as warnings, the rest at DEBUG, instead of straight to stderr."""
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        _llama_log.log(logging.WARNING if level == _GGML_ERROR else logging.DEBUG, "%s", message)


llama_cpp.llama_log_set(_route_log, ctypes.c_void_p(0))


SHOWN_SPECIAL_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")
"""Special tokens written out in generated text (others, like end-of-turn, are not): a
model's tool-call and thinking markers, which Ponder reads back."""


class NativeError(RuntimeError):
    """llama.cpp refused an operation."""


class Model:
    """A GGUF model loaded (memory-mapped) once; its vocabulary and metadata."""

    def __init__(self, path: Path) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = True
        self.ptr: Any = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise NativeError(f"llama.cpp could not load {path}")
        self.vocab: Any = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self.ptr)
        self._pieces: dict[int, bytes] = {}
        # special tokens that are part of the answer's text: a model's tool-call markers
        self._shown = {
            ids[0]
            for marker in SHOWN_SPECIAL_TOKENS
            if len(ids := self.tokenize(marker, add_special=False)) == 1
        }

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def metadata(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:  # a long chat template: ask again with room for it
            buf = ctypes.create_string_buffer(n + 1)
            n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool, special: bool = True) -> list[int]:
        """`add_special`: the model's own BOS/EOS where its vocabulary asks for them;
        `special`: special tokens written in the text are read as such."""
        data = text.encode("utf-8")
        room = len(data) + 8
        tokens = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, room, add_special, special
        )
        if n < 0:  # never more tokens than bytes plus specials, but llama.cpp says how many
            room = -n
            tokens = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), tokens, room, add_special, special
            )
        return list(tokens[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as nothing, but for those in
        SHOWN_SPECIAL_TOKENS); cached."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            special = token in self._shown
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def token_text(self, token: int) -> str:
        """A token's text as the chat template writes it (e.g. BOS); "" for no token (-1)."""
        if token < 0:
            return ""
        text = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self.vocab))


class Context:
    """One llama.cpp context: a KV cache of `n_ctx` cells shared by up to `n_seq` sequences.

    The cache is unified, so that sequences share the cells of a common prefix without copying
    them. Every token then attends to every cell in use, other sequences' masked; flash
    attention skips masked cells, where the default (auto, which chose the plain kernel here)
    made 5 samples of 200 tokens 21% slower beside 2,800 cached cells. A cache split per
    sequence, also measured here, was slower still.
    """

    def __init__(self, model: Model, *, n_ctx: int, n_seq: int, n_batch: int, threads: int):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        self.ptr: Any = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise NativeError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self.memory: Any = llama_cpp.llama_get_memory(self.ptr)
        self.n_vocab = model.n_vocab

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

    def decode(self, batch: Batch) -> None:
        code = llama_cpp.llama_decode(self.ptr, batch.raw)
        if code != 0:
            raise NativeError(f"llama_decode failed ({code})")

    def logits(self, i: int) -> Any:
        """The logits of output `i` of the last batch (a float pointer of `n_vocab` values)."""
        return llama_cpp.llama_get_logits_ith(self.ptr, i)

    def logits_array(self, i: int) -> npt.NDArray[np.float32]:
        """A copy of the logits of output `i` of the last batch."""
        pointer = self.logits(i)
        if not pointer:
            raise NativeError(f"llama.cpp has no logits for output {i}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if not llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1):
            raise NativeError(f"could not remove cells of sequence {seq} from {p0}")

    def seq_copy(self, src: int, dst: int, keep: int) -> None:
        """Makes `dst` hold the first `keep` positions of `src` (what it held is dropped): the
        cells are shared, not copied."""
        self.seq_rm(dst)
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, 0, keep)

    def seq_pos_max(self, seq: int) -> int:
        """The last position sequence `seq` holds in the KV cache; -1 when it holds none."""
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq))

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)


class Batch:
    """A reusable llama_batch of up to `capacity` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw: Any = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def close(self) -> None:
        if self.capacity:
            llama_cpp.llama_batch_free(self.raw)
            self.capacity = 0

    def clear(self) -> None:
        self.n = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Adds one token; returns its index (the output index when `logits`)."""
        i = self.n
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq
        raw.logits[i] = logits
        self.n = raw.n_tokens = i + 1
        return i


@dataclass(frozen=True, slots=True)
class SamplerSettings:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = 0
    grammar: str | None = None
    """A GBNF grammar the output must follow (root rule `root`)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """Added to the logits of these tokens before sampling (-100 bans a token)."""


_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
"""The layout of llama.cpp's `llama_token_data`."""


class Sampler:
    """A llama.cpp sampler chain for one sequence: its own seed, penalties and grammar.

    Temperature 0 is greedy (the most likely token); otherwise the chain filters by top-k,
    top-p and min-p, then draws at the temperature. With `select=False` the chain only shapes
    the logits (bias, penalties, grammar) and the caller picks the token (`shaped`, `accept`).
    """

    def __init__(self, model: Model, s: SamplerSettings, *, select: bool = True) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self.ptr: Any = llama_cpp.llama_sampler_chain_init(params)
        self.shapes = bool(s.logit_bias or s.presence_penalty or s.frequency_penalty or s.grammar)
        self._n_vocab = model.n_vocab
        self._candidates: Any = None
        add = llama_cpp.llama_sampler_chain_add
        if s.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(s.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, bias) for token, bias in s.logit_bias)
            )
            add(
                self.ptr,
                llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(biases), biases),
            )
        if s.presence_penalty or s.frequency_penalty:
            add(
                self.ptr,
                llama_cpp.llama_sampler_init_penalties(
                    64, 1.0, s.frequency_penalty, s.presence_penalty
                ),
            )
        if s.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, s.grammar.encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(self.ptr)
                raise NativeError("llama.cpp could not compile the output grammar")
            add(self.ptr, grammar)
        if not select:
            return
        if s.temperature <= 0:
            add(self.ptr, llama_cpp.llama_sampler_init_greedy())
        else:
            add(self.ptr, llama_cpp.llama_sampler_init_top_k(s.top_k))
            add(self.ptr, llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            add(self.ptr, llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
            add(self.ptr, llama_cpp.llama_sampler_init_temp(s.temperature))
            add(self.ptr, llama_cpp.llama_sampler_init_dist(s.seed))

    def sample(self, ctx: Context, output: int) -> int:
        """Draws the next token from output `output` of the last batch (and accepts it)."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, output))

    def shaped(self, ctx: Context, output: int) -> npt.NDArray[np.float32]:
        """The logits of output `output` after this chain's bias, penalties and grammar (a
        token the grammar forbids is -inf); for a chain built with `select=False`."""
        logits = ctx.logits_array(output)
        if not self.shapes:
            return logits
        if self._candidates is None:
            self._candidates = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        data = self._candidates
        data["id"] = np.arange(self._n_vocab, dtype=np.intc)
        data["logit"] = logits
        data["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(array))
        kept = data[: array.size]
        out = np.full(self._n_vocab, -np.inf, dtype=np.float32)
        out[kept["id"]] = kept["logit"]
        return out

    def accept(self, token: int) -> None:
        """Tells the chain `token` was chosen (penalties and grammar follow it)."""
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
