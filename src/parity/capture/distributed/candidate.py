"""A port that runs on several processes through torch.distributed: `dist:N:FILE.py:FACTORY`.

    parity check MODEL dist:2:examples/tp_llama.py:build --tokens 1,2,3
    parity check MODEL examples/tp_llama.py:build --nproc 2 --tokens 1,2,3     # the same

N processes join one process group (gloo on CPU, NCCL where each rank has a GPU), and each
calls the factory, which builds that rank's shard of the model (it reads its rank from
torch.distributed). Every request runs on all ranks at once: each rank traces its own
forward pass with hooks, as the torch backend does, and writes its checkpoints to a rank
trace; the parent merges the rank traces by the port's `parity_shards` layout
(core/shards/), keeping each rank's for the per-rank comparison. The spec carries the rank
count, so that a candidate opens from its spec alone, in every command and the Python API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, register_candidate
from parity.core.errors import OptionError
from parity.core.shards.layout import LOCAL_PREFIX, ShardLayout
from parity.core.trace import Trace

PREFIX = "dist:"
MAX_RANKS = 64


def parse_spec(spec: str) -> tuple[int, str]:
    """'dist:2:port.py:build' -> (2, 'port.py:build'); OptionError saying how it is written."""
    count, _, port = spec.removeprefix(PREFIX).partition(":")
    if not count.isdigit() or not 1 <= int(count) <= MAX_RANKS or not port:
        raise OptionError(f"'{spec}' is not {DistributedCandidate.written}: N ranks (1 to {MAX_RANKS}), then the "
                          "port's factory, e.g. dist:2:my_port.py:build")
    return int(count), port


def distributed_spec(candidate: Any, nproc: int | None) -> Any:
    """CANDIDATE run on `nproc` processes (the --nproc option): `dist:N:CANDIDATE`; as given when nproc is None."""
    if nproc is None:
        return candidate
    from parity.capture.candidate import parse_candidate

    if not isinstance(candidate, str) or candidate.startswith(PREFIX) or parse_candidate(candidate).backend.backend \
            != "torch":
        raise OptionError(f"--nproc runs a port's FILE.py:FACTORY (or module:FACTORY) on N processes; CANDIDATE is "
                          f"{candidate!r}")
    return f"{PREFIX}{nproc}:{candidate}"


@register_candidate
class DistributedCandidate(Candidate):
    backend = "distributed"
    written = "dist:N:FILE.py:FACTORY"
    nature = "a port run on several processes, one forward pass per request"
    claim_order = 20
    capabilities = frozenset({"trace", "logits", "weights"})

    def __init__(self, spec: str, group, layout: ShardLayout) -> None:
        super().__init__(spec)
        self.group, self.layout = group, layout
        self.precision = group.started[0]["dtype"]
        self._traces = 0
        self._stack.callback(group.close)

    @classmethod
    def claims(cls, spec: Any) -> bool:
        return isinstance(spec, str) and spec.startswith(PREFIX)

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        from parity.capture.torch.candidate import TorchCandidate

        TorchCandidate.check_spec(parse_spec(spec)[1])

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "DistributedCandidate":
        from parity.capture.distributed.group import FAILED_GRACE_S, RankGroup

        count, port = parse_spec(spec)
        cls.check_spec(spec)
        context.step(f"starting {count} rank{'s' if count > 1 else ''} of {port} through torch.distributed")
        group = RankGroup(port, count, model_path=context.model_path, timeout_s=context.timeout_s)
        try:
            group.start()
            layout = _declared_layout(spec, group.started)
        except BaseException:
            group.close(FAILED_GRACE_S)
            raise
        return cls(spec, group, layout)   # closes the group when it is closed

    @property
    def description(self) -> str:
        described = self.group.started[0]
        return (f"{described['class']} on {self.group.world_size} ranks through torch.distributed "
                f"({self.group.backend}, {self.precision})")

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        if request.start_position:
            raise OptionError("--start-position: a distributed candidate is checked from position 0; leave out "
                              "--start-position")
        from parity.core.shards.merge import merge_ranks
        from parity.core.trace import load_trace

        if progress is not None:
            progress.step(f"capturing the candidate's {self.group.world_size} ranks over {len(tokens)} tokens")
        self._traces += 1
        folder = self.group.directory / f"trace{self._traces}"
        folder.mkdir()
        payload = {"tokens": list(tokens), "checkpoints": with_collective_inputs(request.checkpoints),
                   "weights": request.weights, "taps": request.taps, "layout": self.layout.as_json(),
                   "path": str(folder / "rank{rank}.safetensors")}
        answers = self.group.ask("trace", payload, what=f"tracing the forward pass over {len(tokens)} tokens")
        ranks = [load_trace(answer["path"]) for answer in answers]
        return merge_ranks(ranks, layout=self.layout, where=[f"rank {rank}" for rank in range(len(ranks))],
                           source=f"{self.spec} ({len(ranks)} ranks)")

    def logits(self, ids: list[int], first: int = 0) -> np.ndarray:
        from parity.core.shards.merge import merge_tensors

        rows = self.group.ask("logits", list(ids), what=f"running the forward pass over {len(ids)} tokens")
        return merge_tensors("logits", self.layout.of("logits"), rows)[first:]


def with_collective_inputs(checkpoints: str | None) -> str | None:
    """A --checkpoints selection that also selects each checkpoint's collective input (local.<checkpoint>)."""
    if not checkpoints:
        return checkpoints
    globs = [glob.strip() for glob in checkpoints.split(",") if glob.strip()]
    local = [("!" + LOCAL_PREFIX + glob[1:]) if glob.startswith("!") else LOCAL_PREFIX + glob
             for glob in globs if not glob.removeprefix("!").startswith(LOCAL_PREFIX)]
    return ",".join(globs + local)


def _declared_layout(spec: str, started: list[dict]) -> ShardLayout:
    """The layout every rank's module declares (`parity_shards`), which must be one."""
    declared = started[0]["shards"]
    if not declared:
        raise OptionError(f"{spec}: the module {started[0]['class']} declares no `parity_shards`, so its ranks' "
                          "checkpoints cannot be merged; set one: {\"layers.{i}.q\": \"split:heads\", "
                          "\"local.layers.{i}.attn_out\": \"partial\", \"*\": \"replicated\", ...} "
                          "(docs/trace-format.md, 'Sharded traces')")
    for rank, described in enumerate(started):
        if described["shards"] != declared:
            raise OptionError(f"{spec}: rank {rank} declares another `parity_shards` than rank 0; every rank "
                              "declares the one layout of the run")
    return ShardLayout.parse(declared, where=f"{Path(parse_spec(spec)[1].rpartition(':')[0]).name}: parity_shards")
