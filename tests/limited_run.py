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


# The CLI, writing at exit the peak resident memory of its own process image (VmHWM): getrusage's
# maxrss would also count the memory of the test process it was forked from.
MEASURED_CLI = ("import atexit, os, sys; from parity.cli import main\n"
                "def peak():\n"
                "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
                "    open(os.environ['PARITY_TEST_PEAK'], 'w').write(line.split()[1])\n"
                "atexit.register(peak)\n"
                "sys.exit(main(sys.argv[1:]))\n")


def run_parity(args: list[str], *, address_space_mb: int = 1024, timeout_s: float = 60.0) -> Run:
    limit = address_space_mb * 2**20

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "COLUMNS": "100"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        env["PARITY_TEST_PEAK"] = peak.name
        process = subprocess.Popen([sys.executable, "-c", MEASURED_CLI, *args], stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, env=env, preexec_fn=limit_memory)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            process.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status = os.waitpid(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        peak_kib = peak.read().strip()   # none when the process was killed
        return Run(None if killed.is_set() else process.returncode, out.read(), err.read(),
                   int(peak_kib) / 1024 if peak_kib else float("inf"))
