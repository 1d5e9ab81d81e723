"""llama.cpp as a candidate, layer by layer, through llama-cpp-python.

llama.cpp builds a compute graph per batch and, when a context is created with
an eval callback (`cb_eval`), asks the callback about each graph node before it
runs ("do you want this one?") and hands it each wanted node after it ran. The
callback reads the node's name, op, type, shape and data through ggml's C API
(ctypes), and the names are mapped to canonical checkpoints per architecture by
`llamacpp_names` (the output projection and the attention residual, unnamed in
most graphs, by what they consume).

The KV cache's type is a setting (`kv_type`, F16 by default as in llama.cpp);
the type the attention actually read K in is taken from the graph and written
to the trace's metadata (`kv_type`), for the calibration to emulate.

Layouts are undone, never guessed:
  - ggml orders dimensions innermost first: ne = [D, T] is numpy (T, D).
  - GGUF conversion of Llama models permutes the rows of the q and k projections
    within each head, so that llama.cpp can rotate adjacent pairs (RoPE "normal")
    where transformers rotates halves. For such models q, k, q_rope and k_rope
    are permuted back; `undo_qk_permutation=False` turns this off (to show what
    a misaligned comparison looks like).
  - attention probabilities span the KV cache's padded length; the columns past
    the prompt are dropped after checking that they hold no probability.

Long inputs run as llama.cpp runs them by default: in micro-batches of UBATCH
tokens, one llama_decode each, through the KV cache. Each checkpoint then comes a
block of rows at a time (a block of probabilities spans the keys cached so far,
zero past them, as in one batch), and goes to where its rows belong: a tensor
held whole, or the trace file, where it was reserved at its full size. llama.cpp's
own buffers (the scores of one micro-batch, its logits) stay the size of a block.
What cannot be aligned exactly (a quantized intermediate, probabilities fused
away by flash attention) is listed in the trace's `not_comparable` metadata
with the reason, and never compared in the wrong layout.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parity.core.errors import CaptureError, OptionError, require
from parity.capture.llamacpp.blocks import Blocks
from parity.capture.llamacpp.names import GraphNames, layer_of
from parity.core.names import parse, select
from parity.core.rope_layout import unpermute_qk
from parity.core.trace import Trace, make_trace
from parity.core.trace.readers import bfloat16_widened

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64
GGML_TYPES = {0: np.float32, 1: np.float16, 26: np.int32}  # ggml_type -> numpy; bf16 (30) widened by hand
GGML_TYPE_BF16 = 30
KV_TYPE_IDS = {"f32": 0, "f16": 1, "bf16": 30}   # KV cache types that run without flash attention
UBATCH = 512   # tokens per llama_decode for inputs longer than this (llama.cpp's default n_ubatch)
GGML_TYPE_NAMES = {0: "f32", 1: "f16", 8: "q8_0", 30: "bf16"}
LLAMA_ROPE_TYPE_NORM = 0  # rotate adjacent pairs: the GGUF rows of q and k were permuted
QK_KINDS = ("q", "k", "q_rope", "k_rope")


class GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` from ggml.h (the layout of ggml 0.9, llama-cpp-python 0.3.x)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml_library(llama_cpp):
    """ggml's base library, where the tensor functions live, next to llama-cpp-python's."""
    directory = Path(llama_cpp.__file__).parent / "lib"
    names = {"linux": "libggml-base.so", "darwin": "libggml-base.dylib", "win32": "ggml-base.dll"}
    path = directory / names.get(sys.platform, "libggml-base.so")
    if not path.exists():
        raise CaptureError(f"{path} not found: this llama-cpp-python build does not ship ggml's shared library")
    library = ctypes.CDLL(str(path))
    library.ggml_op_desc.restype = ctypes.c_char_p
    library.ggml_op_desc.argtypes = [ctypes.c_void_p]
    library.ggml_nbytes.restype = ctypes.c_size_t
    library.ggml_nbytes.argtypes = [ctypes.c_void_p]
    library.ggml_backend_tensor_get.restype = None
    library.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return library


@dataclass
class _Recording:
    """What one decode's callback collected: raw arrays in ggml order, plus why some could not be read."""

    checkpoints: str | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    not_comparable: dict[str, str] = field(default_factory=dict)
    head_dims: dict[str, int] = field(default_factory=dict)  # "q"/"k" -> head_dim seen on RoPE
    graph_names: list[str] = field(default_factory=list)
    wanted: dict[int, str] = field(default_factory=dict)      # node address -> canonical, decided when asked
    produced: dict[int, str] = field(default_factory=dict)    # node address -> kind, for structural matches
    layer: int | None = None                                  # the layer of the last indexed node
    kv_type: str | None = None                                # the type K was read in by q @ K^T
    count: int = 0                                            # tokens in the batch
    offset: int = 0                                           # tokens decoded before this batch
    total: int = 0                                            # tokens in the whole input
    sink: Callable[[str, np.ndarray], None] | None = None     # takes each aligned tensor as its layer ends
    drop: Callable[[str, str], None] | None = None            # told of a tensor a micro-batch could not align
    written: list[str] = field(default_factory=list)          # the names handed to the sink
    sink_error: BaseException | None = None                   # what the sink raised (a full disk), raised after
    chosen: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> the MoE's expert ids (T, k), slot order


def thread_budget() -> int:
    """llama.cpp's threads when none are given: OMP_NUM_THREADS when set (the budget torch keeps to as well, so
    that a check on a shared machine uses no more cores than asked), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


class LlamaCppRunner:
    """A GGUF model loaded in llama.cpp, traced one prompt at a time. A context manager.

        with LlamaCppRunner("model.gguf") as runner:
            trace = runner.capture(runner.tokenize("Hello"))
    """

    def __init__(self, gguf: str | Path, *, threads: int | None = None, undo_qk_permutation: bool = True,
                 kv_type: str = "f16") -> None:
        if kv_type not in KV_TYPE_IDS:
            raise OptionError(f"--kv-type {kv_type} is not supported; choose one of {', '.join(KV_TYPE_IDS)}")
        self.path = Path(gguf)
        self.threads = threads or thread_budget()
        self.undo_qk_permutation = undo_qk_permutation
        self.kv_type = kv_type
        self._llama = require("llama_cpp", extra="llamacpp", package="llama-cpp-python",
                              purpose="running a model in llama.cpp")
        self._model = None
        self._recording: _Recording | None = None
        self._names: GraphNames | None = None
        self._callback = self._llama.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with self

    def __repr__(self) -> str:
        return f"<LlamaCppRunner {self.path.name} {'loaded' if self._model else 'closed'}>"

    def __enter__(self) -> "LlamaCppRunner":
        from parity.capture.gguf.header import read_header
        from parity.capture.llamacpp.probe import probe

        if not os.path.lexists(self.path):
            raise CaptureError(f"{self.path}: no such .gguf file")
        read_header(self.path)   # a regular file whose header is sound, or one line
        probe(self.path)         # loaded in a child process first: llama.cpp's abort is not parity's
        llama = self._llama
        llama.llama_backend_init()
        _silence_llama_logs(llama)
        self._ggml = _ggml_library(llama)
        self._model = llama.llama_model_load_from_file(str(self.path).encode(), llama.llama_model_default_params())
        if not self._model:
            raise CaptureError(f"{self.path}: llama.cpp could not load this file (is it a GGUF model?)")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self._names = GraphNames(self._meta("general.architecture"))
        return self

    def __exit__(self, *exc_info) -> None:
        if self._model:
            self._llama.llama_model_free(self._model)
            self._model = None

    # --- tokens -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._llama.llama_vocab_n_tokens(self._vocab)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """llama.cpp's own tokenization (BOS added when the GGUF says so)."""
        raw = text.encode("utf-8")
        capacity = len(raw) + 16
        buffer = (self._llama.llama_token * capacity)()
        count = self._llama.llama_tokenize(self._vocab, raw, len(raw), buffer, capacity, add_special, parse_special)
        if count < 0:
            raise CaptureError(f"llama.cpp could not tokenize {text[:40]!r}")
        return list(buffer[:count])

    def special_id(self, which: str) -> int | None:
        """The BOS or EOS id, None when the vocabulary has none."""
        token = {"bos": self._llama.llama_vocab_bos, "eos": self._llama.llama_vocab_eos}[which](self._vocab)
        return token if token >= 0 else None

    def control_ids(self) -> frozenset[int]:
        """Ids of control (special) tokens."""
        is_control = self._llama.llama_vocab_is_control
        return frozenset(i for i in range(self.vocab_size) if is_control(self._vocab, i))

    def piece(self, token: int) -> str:
        buffer = ctypes.create_string_buffer(256)
        length = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[: max(length, 0)].decode("utf-8", errors="replace")

    # --- capture ------------------------------------------------------------------

    def capture(self, tokens: list[int], *, checkpoints: str | None = None, prompt: str | None = None,
                start_position: int = 0, path: str | Path | None = None, stream=None) -> Trace:
        """Run one batch over `tokens` (logits at every position), the first at absolute position
        `start_position` (llama.cpp takes each token's position in the batch), and return the trace.
        With `path`, each layer's tensors are written to that trace file as the next layer starts, and the
        trace returned reads them back a tensor at a time: its memory does not grow with the layers.
        With `stream` (core/streamed.py), the checkpoints it wants go there a micro-batch at a time instead."""
        if not tokens:
            raise OptionError("no tokens to run: give a non-empty --prompt or --tokens")
        outside = next((token for token in tokens if not 0 <= token < self.vocab_size), None)
        if outside is not None:
            raise OptionError(f"token id {outside} is outside the vocabulary of {self.path.name} "
                              f"(ids 0 to {self.vocab_size - 1}); give ids within it")
        if path is not None:
            return self._capture_to_file(tokens, Path(path), checkpoints=checkpoints, prompt=prompt,
                                         start_position=start_position, stream=stream)
        tensors, metadata = self._run(tokens, checkpoints, prompt, start_position, stream=stream)
        return make_trace(tensors, metadata, source=str(self.path))

    def _run(self, tokens: list[int], checkpoints: str | None, prompt: str | None, start_position: int,
             sink: Callable[[str, np.ndarray], None] | None = None,
             blocks: Blocks | None = None, stream=None) -> tuple[dict[str, np.ndarray], dict]:
        """(tensors, metadata) of one pass; with `sink`, the tensors of each finished layer went there as the
        pass ran, and `tensors` holds the rest. An input longer than UBATCH runs in micro-batches, its
        checkpoints put into `blocks` (held in memory when not given) a block of rows at a time; `tensors`
        is then what `blocks` holds."""
        drop = None
        if len(tokens) > UBATCH:
            blocks = blocks if blocks is not None else Blocks(len(tokens))
            sink, drop = (lambda name, array: blocks.put(name, array, self._recording.offset)), blocks.drop
        kept: dict[str, np.ndarray] = {}
        if stream is not None:     # what the stream wants goes there as each layer ends; the rest as before
            sink = _streaming(stream, sink or kept.__setitem__, lambda: self._recording.offset)
        self._recording = _Recording(checkpoints, count=len(tokens), total=len(tokens), sink=sink, drop=drop)
        try:
            logits = self._decode(tokens, start_position, on_block=self._block_handler(blocks, checkpoints))
        finally:
            recording, self._recording = self._recording, None
        if recording.sink_error is not None:
            raise CaptureError(f"writing llama.cpp's trace failed: {recording.sink_error}")
        if blocks is not None:
            tensors = blocks.tensors
            recording.not_comparable.update(blocks.dropped)
        else:
            tensors = {**kept, **self._align(recording)}
            for name in [name for name in tensors if stream is not None and stream.wants(name)]:
                stream.put(name, tensors.pop(name), 0)
            if "logits" not in tensors and "logits" not in recording.written and select(["logits"], checkpoints):
                tensors["logits"] = logits
        metadata = {
            "arch": self._meta("general.architecture"),
            "producer": f"llama.cpp (llama-cpp-python {self._llama.__version__})",
            "dtype": "float32",
            "weights": self._description(),
            "tokens": list(tokens),
            "prompt": prompt,
            "not_comparable": recording.not_comparable or None,
            "kv_type": recording.kv_type,
            **({"start_position": start_position} if start_position else {}),
        }
        return tensors, metadata

    def _block_handler(self, blocks: Blocks | None, checkpoints: str | None):
        """What runs after each micro-batch: its checkpoints aligned and put into `blocks` with llama.cpp's
        logits (the graph names no logits node), the recording emptied for the next one."""
        if blocks is None:
            return None

        def after_block(start: int, rows: int, logits: np.ndarray) -> None:
            recording = self._recording
            self._hand_over(recording)     # the last layer's tensors, and those of no layer
            if select(["logits"], checkpoints) and recording.sink_error is None:
                try:                                   # llama.cpp's output (the graph names no logits node)
                    blocks.put("logits", logits, start)
                except Exception as error:  # a full disk: raised once the pass is over
                    recording.sink_error = error
            recording.wanted.clear()
            recording.produced.clear()
            recording.layer = None

        return after_block

    def _capture_to_file(self, tokens: list[int], path: Path, *, checkpoints: str | None, prompt: str | None,
                         start_position: int, stream=None) -> Trace:
        import json

        from parity.core.trace import load_trace
        from parity.core.trace.trace import clean_metadata, metadata_strings, storage
        from parity.core.trace.writer import trace_file

        with trace_file(path, expected_tensors=64 * max(1, self._layer_count()) + 16,
                        metadata_bytes=len(json.dumps(tokens)) + 4096) as writer:
            def sink(name: str, array: np.ndarray) -> None:
                writer.add(name, *storage(array, "float32"))

            blocks = Blocks(len(tokens), writer) if len(tokens) > UBATCH else None
            tensors, metadata = self._run(tokens, checkpoints, prompt, start_position, sink, blocks, stream)
            for name, array in tensors.items():     # what the end of the pass left: the last layers, the logits
                sink(name, array)
            del tensors
            writer.finish(metadata_strings(clean_metadata(metadata)))
        return load_trace(path)

    def _layer_count(self) -> int:
        count = self._meta(f"{self._meta('general.architecture')}.block_count")
        return int(count) if count and count.isdigit() else 0

    def logits(self, tokens: list[int], first: int = 0) -> np.ndarray:
        """Logits at positions first.. of one batch over `tokens`: (T - first, V); no tensors recorded. Each
        micro-batch's rows before `first` are let go as it is read (every row is still computed, as a full
        pass computes it)."""
        if not tokens or max(tokens) >= self.vocab_size or min(tokens) < 0:
            raise OptionError(f"token ids must be within the vocabulary of {self.path.name} ({self.vocab_size})")
        if not first:
            return self._decode(tokens)
        kept = []

        def keep(row: int, count: int, logits: np.ndarray) -> None:
            if row + count > first:
                kept.append(logits[max(0, first - row):])

        self._decode(tokens, on_block=keep)
        return np.concatenate(kept)

    def incremental_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """Prefill `prompt` in one batch, then decode `continuation` one token at a time through the
        KV cache: the logits of the last prompt position and of each decoded token, (1 + N, V)."""
        with self._stepping(len(prompt) + len(continuation)) as step:
            rows = [step(prompt)] + [step([token]) for token in continuation]
        return np.stack(rows)                                                      # (1 + N, V)

    def greedy(self, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
        """The greedy continuation of `prompt` decoded through llama.cpp's KV cache, as it generates:
        (tokens, each step's log-probs)."""
        from parity.core.generation import greedy_stepped

        with self._stepping(len(prompt) + count) as step:
            return greedy_stepped(step, prompt, count)

    @contextmanager
    def _stepping(self, capacity: int):
        """`step(ids)` in one llama.cpp context of `capacity` positions: decodes `ids` after everything given
        before and returns the last one's logits (V,)."""
        llama, vocab = self._llama, self.vocab_size
        params = llama.llama_context_default_params()
        params.n_ctx = max(capacity, 32)
        params.n_batch = params.n_ubatch = max(min(capacity, UBATCH), 32)
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = 0  # as in the full pass, so that only the decode path differs
        params.type_k = params.type_v = KV_TYPE_IDS[self.kv_type]
        context = llama.llama_init_from_model(self._model, params)
        if not context:
            raise CaptureError("llama.cpp could not create a context")
        position = 0

        def step(ids: list[int]) -> np.ndarray:
            for first in range(0, len(ids) - UBATCH, UBATCH):   # a long prompt: a micro-batch at a time
                decode(ids[first:first + UBATCH])
            return decode(ids[(len(ids) - 1) // UBATCH * UBATCH:])

        def decode(chunk: list[int]) -> np.ndarray:
            nonlocal position
            batch = llama.llama_batch_init(len(chunk), 0, 1)
            try:
                for offset, token in enumerate(chunk):
                    batch.token[offset], batch.pos[offset] = token, position + offset
                    batch.n_seq_id[offset], batch.seq_id[offset][0] = 1, 0
                    batch.logits[offset] = offset == len(chunk) - 1
                batch.n_tokens = len(chunk)
                if llama.llama_decode(context, batch) != 0:
                    raise CaptureError(f"llama.cpp failed to decode at position {position}")
                position += len(chunk)
                row = llama.llama_get_logits_ith(context, len(chunk) - 1)
                return np.ctypeslib.as_array(row, shape=(vocab,)).copy()
            finally:
                llama.llama_batch_free(batch)

        try:
            yield step
        finally:
            llama.llama_free(context)

    def _decode(self, tokens: list[int], start: int = 0, on_block=None) -> np.ndarray | None:
        """Logits at every position, (T, V), from one llama_decode, or one per micro-batch of UBATCH tokens
        for a longer input (through the KV cache, as llama.cpp runs a long prompt). With `on_block`, it is
        called after each micro-batch with (first row, rows, that batch's logits) and None is returned."""
        llama, count, vocab = self._llama, len(tokens), self.vocab_size
        step = min(count, UBATCH)
        params = llama.llama_context_default_params()
        params.n_ctx = max(count, 32)
        params.n_batch = params.n_ubatch = max(step, 32)
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = 0  # off: the attention probabilities must exist to be compared
        params.type_k = params.type_v = KV_TYPE_IDS[self.kv_type]
        params.cb_eval = self._callback
        context = llama.llama_init_from_model(self._model, params)
        if not context:
            raise CaptureError(f"llama.cpp could not create a context for {count} tokens")
        batch = llama.llama_batch_init(step, 0, 1)
        kept = [] if on_block is None else None
        try:
            for first in range(0, count, step):
                chunk = tokens[first:first + step]
                if self._recording is not None:
                    self._recording.count, self._recording.offset = len(chunk), first
                for offset, token in enumerate(chunk):
                    batch.token[offset], batch.pos[offset] = token, start + first + offset
                    batch.n_seq_id[offset], batch.seq_id[offset][0], batch.logits[offset] = 1, 0, True
                batch.n_tokens = len(chunk)
                status = llama.llama_decode(context, batch)
                if status != 0:
                    raise CaptureError(f"llama.cpp failed to decode {len(chunk)} tokens at position "
                                       f"{start + first} (llama_decode returned {status})")
                output = np.ctypeslib.as_array(llama.llama_get_logits(context), shape=(len(chunk) * vocab,))
                logits = output.reshape(len(chunk), vocab).copy()                      # (rows, V)
                if on_block is not None:
                    on_block(first, len(chunk), logits)
                else:
                    kept.append(logits)
            if kept is None:
                return None
            return kept[0] if len(kept) == 1 else np.concatenate(kept)                  # (T, V)
        finally:
            llama.llama_batch_free(batch)
            llama.llama_free(context)

    def _description(self) -> str:
        """llama.cpp's one-line model description, e.g. 'llama 135M Q4_1'."""
        buffer = ctypes.create_string_buffer(128)
        self._llama.llama_model_desc(self._model, buffer, len(buffer))
        return buffer.value.decode()

    def _meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(256)
        length = self._llama.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode() if length >= 0 else None

    # --- the eval callback ----------------------------------------------------------

    def _on_node(self, pointer, ask: bool, _user_data) -> bool:
        """Called by llama.cpp's scheduler for each graph node; must never raise."""
        try:
            recording = self._recording
            if recording is None:
                return not ask
            tensor = ctypes.cast(pointer, ctypes.POINTER(GgmlTensor)).contents
            if ask:
                canonical = self._classify(pointer, tensor, recording)
                wanted = canonical is not None and bool(select([canonical], recording.checkpoints))
                if wanted:
                    recording.wanted[pointer] = canonical
                return wanted
            canonical = recording.wanted.get(pointer)
            if recording.offset == 0:
                recording.graph_names.append(tensor.name.decode("utf-8", errors="replace"))
            if canonical is not None:
                if self._ggml.ggml_op_desc(pointer).decode() == "ROPE":
                    recording.head_dims[parse(canonical).kind[0]] = int(tensor.ne[0])
                self._read(pointer, tensor, canonical, recording)
            return True
        except Exception as error:  # an exception must not cross into C
            if self._recording is not None:
                self._recording.not_comparable.setdefault("_callback", f"reading a tensor failed: {error}")
            return not ask

    def _classify(self, pointer, tensor: GgmlTensor, recording: _Recording) -> str | None:
        """The canonical name of a node, from its name and op, or from what it consumes."""
        name = tensor.name.decode("utf-8", errors="replace")
        op = self._ggml.ggml_op_desc(pointer).decode()
        layer = layer_of(name)
        if layer is not None:
            recording.layer = layer
        if op == "MUL_MAT" and name.startswith("kq-") and tensor.src[0]:
            source = ctypes.cast(tensor.src[0], ctypes.POINTER(GgmlTensor)).contents
            recording.kv_type = GGML_TYPE_NAMES.get(source.type, str(source.type))
        canonical = self._names.canonical(name, op, recording.layer)
        if name.startswith("kqv_out-"):
            recording.produced[pointer] = "attn_ctx"
        elif name == "result_norm":
            recording.produced[pointer] = "final_norm"
        elif op == "GET_ROWS" and tensor.src[0] in recording.produced:  # the last layer's output rows
            recording.produced[pointer] = recording.produced[tensor.src[0]]
        elif canonical is None and recording.layer is not None:
            canonical = self._by_structure(tensor, op, recording)
        if canonical is not None and parse(canonical).kind in ("attn_out", "resid_mid"):
            recording.produced[pointer] = parse(canonical).kind
        return canonical

    def _by_structure(self, tensor: GgmlTensor, op: str, recording: _Recording) -> str | None:
        """Unnamed nodes: the matmul consuming kqv_out (and its bias add) is attn_out; the add of
        attn_out and anything but a bias is resid_mid; the matmul consuming result_norm is lm_head_out."""
        inputs = [recording.produced.get(tensor.src[k]) for k in (0, 1)]
        layer = recording.layer
        if op == "MUL_MAT" and inputs[1] == "final_norm":
            return "lm_head_out"
        if op == "MUL_MAT" and inputs[1] == "attn_ctx":
            return f"layers.{layer}.attn_out"
        if op == "ADD" and "attn_out" in inputs:
            other = tensor.src[1 if inputs[0] == "attn_out" else 0]
            other_name = ctypes.cast(other, ctypes.POINTER(GgmlTensor)).contents.name if other else b""
            return f"layers.{layer}.{'attn_out' if other_name.endswith(b'.bias') else 'resid_mid'}"
        return None

    def _read(self, pointer, tensor: GgmlTensor, canonical: str, recording: _Recording) -> None:
        if tensor.type not in GGML_TYPES and tensor.type != GGML_TYPE_BF16:
            recording.not_comparable[canonical] = f"llama.cpp keeps it in a quantized ggml type ({tensor.type})"
            recording.arrays.pop(canonical, None)
            return
        size = self._ggml.ggml_nbytes(pointer)
        raw = np.empty(size, dtype=np.uint8)
        self._ggml.ggml_backend_tensor_get(pointer, raw.ctypes.data, 0, size)
        storage = np.uint16 if tensor.type == GGML_TYPE_BF16 else GGML_TYPES[tensor.type]
        shape = tuple(int(n) for n in reversed(tensor.ne))         # ggml ne[0] is innermost
        strides = tuple(int(n) for n in reversed(tensor.nb))
        array = np.lib.stride_tricks.as_strided(raw.view(storage), shape=shape, strides=strides)
        array = bfloat16_widened(array) if tensor.type == GGML_TYPE_BF16 else array.copy()
        integers = np.issubdtype(array.dtype, np.integer)   # the ids an MoE router chose (ffn_moe_topk)
        recording.arrays[canonical] = array.astype(np.int64 if integers else np.float32, copy=False)
        recording.not_comparable.pop(canonical, None)
        layer = _layer(canonical)
        if recording.sink is not None and layer is not None:
            self._hand_over(recording, before_layer=layer - 1)

    def _hand_over(self, recording: _Recording, before_layer: int | None = None) -> None:
        """Give the sink every tensor of the layers before `before_layer` (None: every tensor recorded),
        aligned, and let them go. (A node of a layer can be read again while that layer runs, a bias added to
        a matmul's output: a layer is handed over only once the one after it is under way.)"""
        finished = [name for name in recording.arrays if before_layer is None
                    or _layer(name) is not None and _layer(name) < before_layer]
        for name in finished:
            array = self._aligned(name, recording.arrays.pop(name), recording)
            if array is None and recording.drop is not None:
                recording.drop(name, recording.not_comparable.get(name, "a micro-batch could not be aligned"))
            if array is None or recording.sink_error is not None:
                continue
            try:
                recording.sink(name, array)
                recording.written.append(name)
            except Exception as error:  # a full disk: raised once the pass is over
                recording.sink_error = error

    # --- layouts ------------------------------------------------------------------

    @property
    def _qk_permuted(self) -> bool:
        """Whether q and k come out in the GGUF conversion's row order, to be undone."""
        return self.undo_qk_permutation and self._llama.llama_model_rope_type(self._model) == LLAMA_ROPE_TYPE_NORM

    def _align(self, recording: _Recording) -> dict[str, np.ndarray]:
        """Every recorded tensor not yet handed over, in the trace's layouts."""
        tensors = {}
        for name, array in recording.arrays.items():
            array = self._aligned(name, array, recording)
            if array is not None:
                tensors[name] = array
        return tensors

    def _aligned(self, name: str, array: np.ndarray, recording: _Recording) -> np.ndarray | None:
        """One recorded tensor in the trace's layout; None (its reason in not_comparable) when it cannot be."""
        count = recording.count
        kind = parse(name).kind
        array = array.reshape(array.shape[1:]) if array.shape[0] == 1 else array  # (1, a, b, c) -> (a, b, c)
        if kind == "attn_probs":
            array, reason = _prompt_columns(array, count, recording.offset + count, recording.total)
            # (H, rows, n_kv) -> (H, rows, T)
            if reason:
                recording.not_comparable[name] = reason
                return None
        else:
            array = array.reshape(count, -1)                                      # (T, ...) -> (T, width)
        if kind in ("moe_experts", "moe_weights"):
            return self._routing(name, array, recording)
        if kind in QK_KINDS and self._qk_permuted:
            head_dim = recording.head_dims.get(kind[0])
            if head_dim is None or head_dim % 2:
                recording.not_comparable[name] = "the head size of the GGUF q/k permutation is unknown"
                return None
            array = unpermute_qk(array, head_dim)
        return array

    def _routing(self, name: str, array: np.ndarray, recording: _Recording) -> np.ndarray | None:
        """moe_experts: the ids chosen (T, k), ascending per token (their slot order kept for the weights);
        moe_weights: the chosen experts' final weights (T, k) set out as the dense (T, E) table, zero elsewhere."""
        checkpoint = parse(name)
        if checkpoint.kind == "moe_experts":
            recording.chosen[checkpoint.layer] = array
            return np.sort(array, axis=-1)
        chosen, experts = recording.chosen.get(checkpoint.layer), self._expert_count
        if chosen is None or chosen.shape != array.shape or not experts:
            recording.not_comparable[name] = ("the experts each weight belongs to were not read (ffn_moe_topk), or "
                                              "the GGUF gives no expert count")
            return None
        dense = np.zeros((array.shape[0], experts), dtype=np.float32)
        np.put_along_axis(dense, chosen, array, axis=-1)
        return dense

    @functools.cached_property
    def _expert_count(self) -> int:
        count = self._meta(f"{self._meta('general.architecture')}.expert_count")
        return int(count) if count and count.isdigit() else 0


def _streaming(stream, sink: Callable[[str, np.ndarray], None], offset: Callable[[], int]):
    """A sink that puts what `stream` wants there, at the micro-batch's first row, and the rest into `sink`."""
    def put(name: str, array: np.ndarray) -> None:
        if stream.wants(name):
            stream.put(name, array, offset())
        else:
            sink(name, array)

    return put


def _layer(name: str) -> int | None:
    checkpoint = parse(name)
    return checkpoint.layer if checkpoint is not None else None


def _prompt_columns(probabilities: np.ndarray, rows: int, seen: int | None = None,
                    total: int | None = None) -> tuple[np.ndarray, str | None]:
    """(H, rows, n_kv) probabilities of `rows` queries over a KV cache holding `seen` tokens (default: rows) as
    (H, rows, total): the first `seen` key columns, which must hold all the probability, then zeros up to
    `total` columns (keys a later micro-batch adds, which these rows cannot see)."""
    seen = rows if seen is None else seen
    total = seen if total is None else total
    if probabilities.ndim != 3 or probabilities.shape[1] != rows or probabilities.shape[2] < seen:
        return probabilities, f"unexpected attention shape {list(probabilities.shape)} for {rows} tokens"
    outside = float(np.abs(probabilities[:, :, seen:]).max()) if probabilities.shape[2] > seen else 0.0
    if outside > 0.0:
        return probabilities, f"KV cache cells past the prompt hold probability {outside:.3g}"
    if total == seen:
        return probabilities[:, :, :seen], None
    padded = np.zeros((*probabilities.shape[:2], total), dtype=probabilities.dtype)
    padded[:, :, :seen] = probabilities[:, :, :seen]
    return padded, None


_LOG_CALLBACK = None


def _silence_llama_logs(llama) -> None:
    """llama.cpp logs every load to stderr; keep only errors (level 4)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        @llama.llama_log_callback
        def log(level, text, _data):
            if level == 4 and text:
                sys.stderr.write(text.decode("utf-8", errors="replace"))

        _LOG_CALLBACK = log
    llama.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def capture_llamacpp(gguf: str | Path, *, prompt: str | None = None, tokens: list[int] | None = None,
                     checkpoints: str | None = None, undo_qk_permutation: bool = True,
                     kv_type: str = "f16") -> Trace:
    """Trace one forward pass of a GGUF model in llama.cpp."""
    if (prompt is None) == (tokens is None):
        raise OptionError("give exactly one of a prompt or token ids")
    with LlamaCppRunner(gguf, undo_qk_permutation=undo_qk_permutation, kv_type=kv_type) as runner:
        ids = tokens if tokens is not None else runner.tokenize(prompt)
        return runner.capture(ids, checkpoints=checkpoints, prompt=prompt)
