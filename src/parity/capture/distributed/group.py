"""The ranks of a distributed candidate: N processes started by torch.multiprocessing in one torch.distributed
process group (gloo on CPU, NCCL where every rank has a GPU of its own), asked the same thing at once.

    with RankGroup("port.py:build", 2, model_path="models/llama", timeout_s=60) as group:
        built = group.started                          # what each rank's factory returned, described
        rows = group.ask("logits", [1, 2, 3], what="running the forward pass")   # one answer per rank

A rank that fails answers in one line, raised as CaptureError naming the rank. A rank that dies, or
ranks that do not answer within the timeout (one waiting in a collective another never joined), stop
the whole group: each process is killed by its own id, and the error says which ranks did not answer.
Nothing waits longer than `timeout_s` for one step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import types
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from parity.core.errors import CaptureError

STOP_GRACE_S = 5.0     # a rank told to stop has this long to leave before it is killed
FAILED_GRACE_S = 0.5   # after a failure the others are likely waiting in a collective: killed sooner
COLLECTIVE_SLACK_S = 30.0   # torch.distributed's own timeout is longer than ours, so that ours speaks first


BACKEND_VARIABLE = "PARITY_DIST_BACKEND"   # gloo or nccl, to choose rather than have it chosen


def default_backend(world_size: int) -> str:
    """$PARITY_DIST_BACKEND if set; else NCCL where every rank can have a GPU of its own, else gloo."""
    import torch
    import torch.distributed as dist

    chosen = os.environ.get(BACKEND_VARIABLE)
    if chosen:
        if chosen not in ("gloo", "nccl", "mpi", "ucc", "xccl"):
            raise CaptureError(f"${BACKEND_VARIABLE} is {chosen!r}; set it to gloo or nccl, or unset it")
        return chosen

    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def start_method() -> str:
    """forkserver where there is one (a server that imported torch once forks each rank: no rank imports it
    again), else spawn; never a plain fork of a process that has run torch."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class RankGroup:
    """N rank processes serving the port `spec` (capture/distributed/worker.py); a context manager."""

    def __init__(self, spec: str, world_size: int, *, model_path: str | None, timeout_s: float,
                 backend: str | None = None) -> None:
        self.spec, self.world_size, self.model_path, self.timeout_s = spec, world_size, model_path, timeout_s
        self.backend = backend
        self.started: list[Any] = []
        self.directory: Path | None = None
        self._processes: list = []
        self._connections: list = []

    def __repr__(self) -> str:
        return f"<RankGroup {self.spec} on {self.world_size} ranks ({self.backend})>"

    def __enter__(self) -> "RankGroup":
        try:
            self.start()
        except BaseException:
            self.close(FAILED_GRACE_S)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        import torch.multiprocessing as multiprocessing

        from parity.capture.distributed.worker import serve

        self.backend = self.backend or default_backend(self.world_size)
        method = start_method()
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["torch", "torch.distributed", "parity.capture.distributed.worker"])
        self.directory = Path(tempfile.mkdtemp(prefix="parity-ranks-"))
        setup = {"spec": self.spec, "model_path": self.model_path, "backend": self.backend,
                 "rendezvous": (self.directory / "rendezvous").as_uri(),
                 "collective_timeout_s": self.timeout_s + COLLECTIVE_SLACK_S,
                 "threads": max(1, (os.cpu_count() or 1) // self.world_size)}
        with _no_main_for_ranks():
            for rank in range(self.world_size):
                mine, theirs = context.Pipe()
                process = context.Process(target=serve, args=(rank, self.world_size, setup, theirs), daemon=True,
                                          name=f"parity-rank-{rank}")
                process.start()
                theirs.close()
                self._processes.append(process)
                self._connections.append(mine)
        self.started = self._answers(f"starting and building {self.spec}")

    def ask(self, command: str, payload: Any, *, what: str) -> list[Any]:
        """Send every rank `command` and return their answers in rank order; CaptureError if any fails."""
        for rank, connection in enumerate(self._connections):
            try:
                connection.send((command, payload))
            except (OSError, EOFError):
                self._fail(self._ended(rank, what))
        return self._answers(what)

    def rank_path(self, rank: int, stem: str = "rank") -> Path:
        return self.directory / f"{stem}{rank}.safetensors"

    def _answers(self, what: str) -> list[Any]:
        deadline = time.monotonic() + self.timeout_s
        answers: dict[int, Any] = {}
        while len(answers) < self.world_size:
            pending = [rank for rank in range(self.world_size) if rank not in answers]
            waiting = {self._connections[rank]: rank for rank in pending}
            waiting.update({self._processes[rank].sentinel: rank for rank in pending})
            ready = wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self._fail(self._late(what, pending))
            for handle in ready:
                rank = waiting[handle]
                if rank in answers:
                    continue
                connection = self._connections[rank]
                if isinstance(handle, int) and not connection.poll():   # the process ended without a word
                    self._fail(self._ended(rank, what))
                try:
                    status, value = connection.recv()
                except (EOFError, OSError):
                    self._fail(self._ended(rank, what))
                if status == "error":
                    self._fail(f"rank {rank} of {self.world_size} failed {what}: {value}")
                answers[rank] = value
        return [answers[rank] for rank in range(self.world_size)]

    def _late(self, what: str, pending: list[int]) -> str:
        answered = [rank for rank in range(self.world_size) if rank not in pending]
        ranks = _ranks(pending)
        others = f" ({_ranks(answered)} did)" if answered else ""
        return (f"{ranks} did not finish {what} within {self.timeout_s:g} s{others}: a rank waiting in a collective "
                "that another rank never joined, or a step slower than the timeout (raise it with --timeout)")

    def _ended(self, rank: int, what: str) -> str:
        process = self._processes[rank]
        process.join(FAILED_GRACE_S)
        code = process.exitcode
        killed = code is not None and code < 0
        how = f"was killed by {signal.Signals(-code).name}" if killed else f"exited (code {code})"
        return (f"rank {rank} of {self.world_size} {how} while {what}, without saying why (whatever it printed is "
                "above, on stderr)")

    def _fail(self, message: str) -> None:
        self.close(FAILED_GRACE_S)
        raise CaptureError(message)

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Tell every rank to stop, kill (by its own id) any that has not left after `grace_s`, remove the files."""
        for connection in self._connections:
            try:
                connection.send(("stop", None))
            except (OSError, EOFError, ValueError):
                pass
        deadline = time.monotonic() + grace_s
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for connection in self._connections:
            connection.close()
        self._processes, self._connections = [], []
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


@contextlib.contextmanager
def _no_main_for_ranks():
    """While ranks start, the parent's main module names itself `__main__`, which multiprocessing does not import
    in a child: a rank runs parity's worker alone, never the parent's script (`python -`, a notebook) again."""
    main = sys.modules["__main__"]
    saved = getattr(main, "__spec__", None)
    main.__spec__ = types.SimpleNamespace(name="__main__")
    try:
        yield
    finally:
        main.__spec__ = saved


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"

