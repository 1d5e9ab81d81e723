"""llama.cpp as the candidate: `llamacpp:FILE.gguf`, run layer by layer through llama-cpp-python.

Its checkpoints are read from ggml's graph as it computes (runner.py), its logits from
one batch, and its decoding through its own KV cache. Its precision is llama.cpp's:
float32 with the activation rounding of its quantized matmuls and its KV cache type,
which the calibration emulates in a float32 copy of the reference (numerics.py).
When the reference is another file than the GGUF, each weight's rounding is measured
against the reference's and recorded in the trace's metadata.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, register_candidate
from parity.core.errors import OptionError
from parity.core.trace import Trace

PREFIX = "llamacpp:"
NOT_READ_BACK = "not run for llama.cpp candidates (their cache is not read back, batches not padded)"


def llamacpp_spec(gguf: str | Path) -> str:
    """The CANDIDATE spec that runs `gguf` in llama.cpp."""
    return f"{PREFIX}{gguf}"


@register_candidate
class LlamaCppCandidate(Candidate):
    backend = "llamacpp"
    written = "llamacpp:FILE.gguf"
    claim_order = 20
    capabilities = frozenset({"trace", "logits", "decode", "tokenizer", "speed"})

    def __init__(self, spec: str, gguf: Path, kv_type: str) -> None:
        super().__init__(spec)
        self.gguf = gguf
        self.kv_type = kv_type      # the KV cache type to run with; then the one it ran with
        self.precision = "llama.cpp"
        self._runner = None

    @classmethod
    def claims(cls, spec: Any) -> bool:
        return isinstance(spec, str) and spec.startswith(PREFIX)

    @classmethod
    def check_spec(cls, spec: str) -> None:
        from parity.capture.gguf.header import regular_file

        path = Path(spec.removeprefix(PREFIX))
        if not (path.exists() or path.is_symlink()):
            raise OptionError(f"{path}: no such .gguf file for the llama.cpp candidate")
        regular_file(path, what="the llama.cpp candidate's .gguf")   # a FIFO, a device or a directory is said

    @classmethod
    def open(cls, spec: str, context: CandidateContext) -> "LlamaCppCandidate":
        cls.check_spec(spec)
        return cls(spec, Path(spec.removeprefix(PREFIX)), context.kv_type)

    @classmethod
    def open_tokenizer(cls, spec: str, vocabulary):
        from parity.capture.tokenizers import LlamaCppTokenizer

        return LlamaCppTokenizer(Path(spec.removeprefix(PREFIX)))

    @property
    def description(self) -> str:
        return f"llama.cpp {self.gguf.name}"

    def supports(self, capability: str, **context: Any) -> str | None:
        if capability in ("cache", "chunked_prefill", "padding"):
            return NOT_READ_BACK
        return super().supports(capability)

    @property
    def runner(self):
        """The LlamaCppRunner, loaded on first use and freed when the candidate closes."""
        if self._runner is None:
            from parity.capture.llamacpp.runner import LlamaCppRunner

            self._runner = self._stack.enter_context(LlamaCppRunner(self.gguf, kv_type=self.kv_type))
        return self._runner

    @property
    def numerics(self):
        return LlamaCppNumerics(self)

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        if request.start_position:
            # Measured: SmolLM2 at positions 100,000.. differs from the emulated run by ~3% at every position
            # (0% from position 0): llama.cpp's float32 RoPE angles at far positions are not emulated, so a
            # correct build would fail.
            raise OptionError("--start-position: not checked for a llama.cpp candidate: its float32 RoPE angles "
                              "at far positions round in a way parity does not emulate, so a correct build would "
                              "fail; give a PyTorch or transformers candidate, or leave out --start-position")
        if progress is not None:
            progress.step(f"running {self.gguf.name} in llama.cpp over {len(tokens)} tokens")
        trace = self.runner.capture(tokens, checkpoints=request.checkpoints, prompt=request.prompt,
                                    start_position=request.start_position, path=request.spill_to,
                                    stream=request.stream)
        self.kv_type = trace.metadata.get("kv_type") or self.kv_type
        reference = request.reference_model
        if reference is not None and Path(reference.path).resolve() != self.gguf.resolve():
            trace = self._with_weight_rounding(trace, reference, progress)
        return trace

    def _with_weight_rounding(self, trace: Trace, reference_model, progress) -> Trace:
        """The trace with each GGUF weight's measured rounding against the reference's weights."""
        from parity.capture.gguf.weights import measure_weight_rounding

        if progress is not None:
            progress.step(f"measuring how {self.gguf.name}'s weights are rounded from the reference's")
        measured = measure_weight_rounding(reference_model.model, self.gguf)
        metadata = {**trace.metadata, "weight_rounding": [tensor.as_dict() for tensor in measured] or None}
        return dataclasses.replace(trace, metadata=metadata)

    def tokenize(self, text: str) -> list[int]:
        return self.runner.tokenize(text)

    def logits(self, ids: list[int], first: int = 0) -> np.ndarray:
        return self.runner.logits(ids, first)

    def greedy(self, prompt: list[int], count: int):
        return self.runner.greedy(prompt, count)

    def incremental(self, prompt: list[int], continuation: list[int], *, record: bool = False, taps=None):
        return self.runner.incremental_logits(prompt, continuation), []

    def speed_runner(self, options):
        from parity.capture.llamacpp.timing import LlamaCppTimer

        return LlamaCppTimer(self.gguf, options)

    def lowp_reference(self, reference_model):
        """A float32 copy of the reference (llama.cpp computes in float32), made for each use and let go after it:
        at long inputs its 0.5 GB (SmolLM2) would stay beside the float64 reference through the candidate's pass."""
        return reference_model if reference_model.dtype == "float32" else dataclasses.replace(
            reference_model, model=float32_copy(reference_model.model, read=reference_model.rest), dtype="float32")

    def close(self) -> None:
        self._runner = None
        super().close()


class LlamaCppNumerics:
    """The reference run as llama.cpp computes: float32 with its activation rounding, KV cache type and GELU
    table emulated (numerics.py)."""

    dtype = "float32"

    def __init__(self, candidate: LlamaCppCandidate) -> None:
        self.candidate = candidate

    def __repr__(self) -> str:
        return f"<LlamaCppNumerics {self.candidate.gguf.name} kv {self.candidate.kv_type}>"

    @property
    def label(self) -> str:
        return f"llama.cpp's numerics (float32, activation rounding, {self.candidate.kv_type} KV cache)"

    def needed(self, reference_dtype: str) -> bool:
        return True

    def reference(self, reference_model, placement: Any = None):
        from parity.capture.llamacpp.numerics import emulated

        return emulated(self.candidate.lowp_reference(reference_model), self.candidate.gguf,
                        kv_type=self.candidate.kv_type)

    def decode_bounds(self, reference_model, sequence: list[int], reference_logits, positions, *,
                      noise_logits=None) -> tuple[list[float], str]:
        """`reference_logits` and `noise_logits` (the emulated run over `sequence`, where already made for the
        greedy run) are read by position; without `noise_logits` the emulated run is made here."""
        from parity.core.calibrate import FLOOR, MULTIPLE, NEIGHBOURS, neighbourhood_max
        from parity.core.metrics import rel_l2

        first = positions[0]
        if noise_logits is None:
            with self.reference(reference_model) as lowp:
                emulated = lowp.logits(sequence, first)                              # rows first.. (T - first, V)
            noise_logits = {p: emulated[p - first] for p in positions}
        noise = neighbourhood_max([rel_l2(reference_logits[p], noise_logits[p]) for p in positions])
        bounds = [MULTIPLE * value + FLOOR["float32"] for value in noise]
        return bounds, (f"{MULTIPLE:g}x the noise of llama.cpp's numerics at each position (the largest within "
                        f"{NEIGHBOURS} positions of it)")


# A parked model's pages read by the copy are handed back after each this many bytes of it.
_READ_BYTES_HELD = 256 << 20


def float32_copy(model, read=None):
    """A copy of `model` with its floating parameters and buffers in float32, each cast as it is copied: a whole
    float64 copy is never made (deepcopy, then cast, held both: 1.1 GB more for SmolLM2's 135M parameters).
    `read()` is called after each 256 MiB read (a parked model hands back the pages the copy read: Gemma 3 270M's
    2.2 GB of float64 weights were all resident beside the copy). (Not `.float()`: transformers refuses it on a
    model it dequantized from a GGUF.)"""
    import copy

    import torch

    memo, unreleased = {}, 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in memo:
            continue
        narrowed = (tensor.detach().to(torch.float32, copy=True) if tensor.is_floating_point()
                    else tensor.detach().clone())
        memo[id(tensor)] = (torch.nn.Parameter(narrowed, requires_grad=tensor.requires_grad)
                            if isinstance(tensor, torch.nn.Parameter) else narrowed)
        unreleased += tensor.numel() * tensor.element_size()
        if read is not None and unreleased >= _READ_BYTES_HELD:
            read()
            unreleased = 0
    return torch.nn.Module.float(copy.deepcopy(model, memo))
