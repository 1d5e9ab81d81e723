"""The rank traces of a tensor-parallel run written elsewhere, as a candidate: a shards manifest (.json).

    parity check MODEL shards.json      # {"format": "parity-shards/1", "ranks": [...], "layout": {...}}

The manifest lists one trace per rank and the layout that merges them (docs/trace-format.md,
'Sharded traces'); the candidate is the merged trace, each rank's kept for the per-rank comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, register_candidate
from parity.core.trace import Trace


@register_candidate
class ShardFilesCandidate(Candidate):
    backend = "shards"
    written = "a shards manifest (.json)"
    nature = "the rank traces of one forward pass"
    claim_order = 25   # before a plain trace file
    capabilities = frozenset({"trace", "weights"})

    def __init__(self, spec: str, trace: Trace) -> None:
        super().__init__(spec)
        self.loaded = trace
        self.take_declared_precision(trace.metadata.get("dtype"))

    @classmethod
    def claims(cls, spec: Any) -> bool:
        return isinstance(spec, (str, Path)) and str(spec).endswith(".json") and Path(spec).is_file()

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "ShardFilesCandidate":
        from parity.core.shards import load_sharded

        context.step(f"reading the rank traces {spec} lists")
        return cls(str(spec), load_sharded([str(spec)]))

    @property
    def description(self) -> str:
        return f"the {len(self.loaded.ranks)} rank traces of {self.spec}"

    def supports(self, capability: str, **context: Any) -> str | None:
        if capability == "weights" and not any(name.endswith(".weight") for name in self.loaded.tensors):
            return "the rank traces hold no parameters"
        return super().supports(capability)

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        return self.loaded
