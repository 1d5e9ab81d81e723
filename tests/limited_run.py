"""Run `parity` in a subprocess under an address-space limit and a deadline, and measure its peak memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Run:
    code: int | None          # None: killed at the deadline
    out: str
    err: str
    peak_rss_mb: float

    def __repr__(self) -> str:
        return f"<Run exit {self.code} peak {self.peak_rss_mb:.0f} MB: {self.err.strip()[:80]}>"


def run_parity(args: list[str], *, address_space_mb: int = 1024, timeout_s: float = 60.0) -> Run:
    limit = address_space_mb * 2**20

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "COLUMNS": "100"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, "-m", "parity.cli", *args], stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, env=env, preexec_fn=limit_memory)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            process.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(None if killed.is_set() else process.returncode, out.read(), err.read(), usage.ru_maxrss / 1024)
