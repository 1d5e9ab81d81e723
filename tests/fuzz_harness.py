"""Running one fuzz input in a forked copy of a warm process, and telling what became of it.

Shared by the suite's fuzz tests and scripts/fuzz_surfaces.py. The parent imports everything once
(torch, transformers, llama_cpp, parity) and forks per input, so that an input that aborts, hangs or
kills its process is counted, not the end of the run. In the fork: file descriptors 1 and 2 go to
files (what C code writes is caught too), every `open` is audited against the paths the input may
read, and `work()` runs; its result comes back as JSON on a pipe.

Outcomes:
  refused     exit 2, the last line of stderr the only "parity: error:" line (progress lines may come first)
  pass, fail  exit 0 / 1 with no traceback on stderr
  silent      a pass where the surface's oracle says the input cannot be compared or is unsound
  tracebacks  an exception other than parity's escaped, or "Traceback" on stderr
  multi-line  exit 2 without exactly one error line last, or an error line with an escape character
  hangs       the fork ran past its deadline (killed)
  aborts      the fork died of a signal (SIGABRT, SIGSEGV, ...) or exited without a result
  outside     a file opened outside the input's own paths and the interpreter's
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

BAD = ("silent", "tracebacks", "multi-line", "hangs", "aborts", "outside")
_STATE = {"recording": False, "allowed": (), "outside": []}


def _audit(event: str, args) -> None:
    if _STATE["recording"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if not path.startswith(_STATE["allowed"]):
            _STATE["outside"].append(path)


_INSTALLED = []


def install_audit() -> None:
    if not _INSTALLED:
        sys.addaudithook(_audit)
        _INSTALLED.append(True)


def interpreter_paths(*extra: str) -> tuple[str, ...]:
    """What any run may open: the interpreter's own trees, parity's source, system data, this process's /proc."""
    import site

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages(),
             str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent),
             "/usr/lib", "/usr/share", "/usr/local/lib", "/etc/localtime", "/etc/ld.so.cache", "/dev/null",
             "/dev/urandom", "/proc/self", f"/proc/{os.getpid()}", "/proc/meminfo", "/proc/cpuinfo",
             "/sys/devices/system/cpu", "/sys/fs/cgroup", "/etc/os-release", "/proc/sys/kernel/random/boot_id",
             *extra}
    return tuple(sorted(os.path.realpath(root) for root in roots if root))


def run_forked(work: Callable[[], dict], *, allowed: tuple[str, ...], timeout_s: float) -> dict:
    """`work()` in a fork: its result dict with 'stdout', 'stderr', 'outside' added, or {'outcome': 'hangs'} /
    {'outcome': 'aborts', 'status': ...}."""
    install_audit()
    read_end, write_end = os.pipe()
    out_file, err_file = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:   # the fork: never returns
        os.close(read_end)
        status = 0
        try:
            os.dup2(out_file.fileno(), 1)
            os.dup2(err_file.fileno(), 2)
            os.setpgid(0, 0)
            _STATE.update(recording=True, allowed=(*allowed, f"/proc/{os.getpid()}/"), outside=[])
            try:
                result = work()
            except BaseException as error:  # noqa: BLE001 - what escapes is what is counted
                result = {"exception": "".join(traceback.format_exception(error))[-3000:]}
            _STATE["recording"] = False
            result["outside"] = sorted(set(_STATE["outside"]))[:20]
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(json.dumps(result, default=str))
        except BaseException:  # noqa: BLE001
            status = 3
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + timeout_s
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(pid)
                return {"outcome": "hangs"}
            ready, _, _ = select.select([pipe], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(pipe.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)   # grandchildren it left (a probe, a kernel's child)
    out_file.seek(0)
    err_file.seek(0)
    stdout = out_file.read().decode("utf-8", errors="replace")
    stderr = err_file.read().decode("utf-8", errors="replace")
    if code != 0 or not chunks:
        return {"outcome": "aborts", "status": code, "stderr": stderr[-1000:]}
    result = json.loads(b"".join(chunks))
    result.update(stdout=stdout, stderr=stderr)
    return result


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def cli_outcome(codes: list[int], stderr: str) -> str:
    """The outcome of a run of CLI commands (stopped at the first non-zero exit) from their exit codes and
    the stderr they wrote together."""
    if "Traceback" in stderr:
        return "tracebacks"
    last = codes[-1]
    if last == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("parity: error:")]
        if len(errors) != 1 or lines[-1] != errors[0] or "\x1b" in errors[0]:
            return "multi-line"
        return "refused"
    return {0: "pass", 1: "fail"}.get(last, f"exit {last}")


def run_cli(argv: list[str]) -> int:
    """parity's main in this (forked) process; SystemExit is an exit code, anything else escapes."""
    from parity.cli import main

    try:
        return main(argv)
    except SystemExit as exit_:   # parity must not exit this way: count it as a traceback
        raise RuntimeError(f"parity raised SystemExit({exit_.code})") from None


class Tally:
    """Counts of outcomes, and the first example of each bad one."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.started = time.monotonic()

    def add(self, outcome: str, example: str = "") -> None:
        self.counts[outcome] += 1
        if outcome in BAD:
            self.examples.setdefault(outcome, example[-800:])

    def summary(self, surface: str) -> str:
        total = sum(self.counts.values())
        elapsed = time.monotonic() - self.started
        lines = [f"{surface}: {total} inputs in {elapsed:.0f} s; outcomes: "
                 + ", ".join(f"{key} {value}" for key, value in sorted(self.counts.items())),
                 f"{surface}: failures: " + ", ".join(f"{key} {self.counts[key]}" for key in BAD)]
        for outcome, example in self.examples.items():
            lines.append(f"{surface}: first {outcome}: {example.strip()}")
        return "\n".join(lines)

    @property
    def bad(self) -> int:
        return sum(self.counts[key] for key in BAD)
