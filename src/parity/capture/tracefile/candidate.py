"""A trace as the candidate: a .safetensors or .npz file, or a directory with manifest.json, that any
program wrote (docs/trace-format.md). It holds one forward pass; its metadata tells its precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, register_candidate
from parity.core.errors import OptionError
from parity.core.names import is_raw
from parity.core.trace import Trace


@register_candidate
class TraceCandidate(Candidate):
    backend = "trace"
    written = "a trace file"
    nature = "a trace file of one forward pass"
    claim_order = 30
    capabilities = frozenset({"trace", "weights", "raw"})

    def __init__(self, spec: str, trace: Trace) -> None:
        super().__init__(spec)
        self.loaded = trace
        self.take_declared_precision(trace.metadata.get("dtype"))

    @classmethod
    def claims(cls, spec: Any) -> bool:
        """An existing path that is not a model (a directory with config.json, a .gguf) nor a Python file."""
        if not isinstance(spec, (str, Path)) or str(spec).endswith(".py"):
            return False
        path = Path(spec)
        is_model = path.suffix == ".gguf" or (path.is_dir() and (path / "config.json").is_file())
        return path.exists() and not is_model

    @classmethod
    def recorded_tokens(cls, spec: Any) -> list[int] | None:
        from parity.core.trace import load_trace

        tokens = load_trace(spec).tokens          # lazily: the header and metadata alone
        return list(tokens) if tokens else None

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "TraceCandidate":
        from parity.core.trace import load_trace

        context.step(f"reading {spec}")
        return cls(str(spec), load_trace(spec))

    @property
    def description(self) -> str:
        return f"the trace {self.spec}"

    def supports(self, capability: str, **context: Any) -> str | None:
        if capability == "raw" and not any(is_raw(name) for name in self.loaded.tensors):
            return "the trace holds no raw.<module> outputs"
        if capability == "weights" and not any(name.endswith(".weight") for name in self.loaded.tensors):
            return "the trace holds no parameters"
        return super().supports(capability)

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        written = self.loaded.metadata.get("start_position", 0)
        if written != request.start_position:
            raise OptionError(f"{self.spec} was written with its first token at position {written}, the check asks "
                              f"for {request.start_position}: give --start-position {written}, or write the trace's "
                              "metadata 'start_position'")
        return self.loaded
