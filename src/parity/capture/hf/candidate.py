"""A transformers model as the candidate: a model directory (config.json) or a .gguf, at the dtype asked for.

Everything the PyTorch candidate does, with the model's checkpoints found from its
structure as the reference's are (so its raw.<module> outputs line up too) and its
own tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.capture.candidate import CandidateContext, TraceRequest, register_candidate
from parity.capture.hf.model import is_model_path
from parity.capture.torch.candidate import TorchCandidate
from parity.core.trace import Trace


@register_candidate
class HFCandidate(TorchCandidate):
    backend = "hf"
    written = "a model directory or .gguf"
    claim_order = 40
    capabilities = TorchCandidate.capabilities | {"stream", "load_dtype"}

    def __init__(self, spec: str, hf) -> None:
        super().__init__(spec, hf.model)
        self.hf = hf
        self.precision = hf.dtype

    @classmethod
    def claims(cls, spec: Any) -> bool:
        return is_model_path(spec)

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        pass   # it claims only a model that is there

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "HFCandidate":
        from parity.capture.hf.model import load_model

        dtype = context.dtype or "float32"
        context.step(f"loading {spec} as the candidate ({dtype})")
        return cls(str(spec), load_model(spec, dtype=dtype, placement=context.placement))

    @classmethod
    def open_tokenizer(cls, spec: str, vocabulary):
        from parity.capture.tokenizers import HFTokenizer

        return HFTokenizer(Path(spec))

    @property
    def description(self) -> str:
        return f"transformers {self.hf.family} ({self.precision}) from {self.spec}"

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        if request.taps is not None:   # the user's own mapping: traced as any module
            return super().trace(tokens, request, progress)
        if progress is not None:
            progress.step(f"capturing the candidate {Path(self.spec).name} over {len(tokens)} tokens")
        options = dict(checkpoints=request.checkpoints, prompt=request.prompt, weights=request.weights,
                       raw=request.raw, start_position=request.start_position, stream=request.stream)
        if request.spill_to:   # a long input's trace: written as the forward makes it, never held whole
            from parity.core.trace import load_trace

            self.hf.capture_to_file(tokens, request.spill_to, **options)
            return load_trace(request.spill_to)
        return self.hf.capture(tokens, **options)

    def tokenize(self, text: str) -> list[int]:
        return self.hf.tokenize(text)

    def taps(self, taps=None):
        return taps or self.hf.mapping.taps

    def raw_allowed(self, taps=None) -> bool:
        return not taps

    def trace_metadata(self, prompt: str | None) -> dict:
        return self.hf.trace_metadata(prompt)

    def speed_runner(self, options):
        from parity.capture.torch.timing import ModuleTimer

        return ModuleTimer(self.module, options, described=f"transformers {type(self.module).__name__}")
