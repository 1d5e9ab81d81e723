"""User code under a guard: in parity's process, and in a child process where it must be survivable.

A port, a kernel or a factory is code parity did not write. What it may do, and
what parity makes of it:

    raises any exception, SystemExit or another BaseException   a finding, one line (`guarded`)
    calls os._exit, or is killed by a signal                    the child dies; one line, exit 2
    runs forever                                                 the step's deadline; one line, exit 2
    prints                                                       to standard error, never into --json -

In parity's own process (`guarded`), os._exit is replaced while the code runs by a
function that raises `ExitCalled` (a forked child of the user's code still exits), and
sys.stdout is standard error. Writes to file descriptor 1 from C, a C library's exit()
and crashes are only contained in a child process.
In a child process (`run_child`), the child writes events as JSON lines on a pipe of
its own (never standard output, which is the parent's standard error there); each
"step" event starts that step's deadline (before the first, the child's own start, with
parity's imports and torch's, is held to START_TIMEOUT_S: no user code runs in it), a "result" event is collected, an "error"
event is a ParityError the child raised, and "done" ends the run. Nothing is
unpickled: events are JSON.

    parent: results = run_child("parity.kernel.worker", request, step_timeout_s=60.0, describe=...)
    child:  with child_events() as emit: emit("step", name="T=13 float32 normal"); emit("result", ...)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from parity.core.errors import OptionError, ParityError

EVENTS_FD = "PARITY_EVENTS_FD"
MAX_EVENT_BYTES = 64 << 20
# The child's own start (the interpreter, parity, torch), before it names its first step: no user code runs in it,
# so it is held to this, not to the user's per-step --timeout (importing torch takes seconds on a loaded machine).
START_TIMEOUT_S = 300.0


class ExitCalled(BaseException):
    """The user's code called os._exit in parity's own process."""

    def __init__(self, status: int) -> None:
        super().__init__(f"os._exit({status}) called")
        self.status = status


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """While the user's code runs: os._exit raises ExitCalled instead of ending parity, and what it prints
    goes to standard error. Exceptions pass through: the caller turns them into its finding."""
    real, pid = os._exit, os.getpid()

    def refuse_exit(status: int = 0) -> None:
        if os.getpid() != pid:   # a fork of the user's code (a worker) exits as it means to
            real(status)
        raise ExitCalled(status)

    os._exit = refuse_exit
    try:
        with contextlib.redirect_stdout(sys.stderr):   # its prints never land in parity's output (--json -)
            yield
    finally:
        os._exit = real


def is_user_exit(error: BaseException) -> bool:
    """An exception that is not parity's and not the user pressing Ctrl-C (KeyboardInterrupt passes, except
    in a child process, which runs in a session of its own: there only the user's code raises it)."""
    if isinstance(error, KeyboardInterrupt):
        return _IN_CHILD
    return not isinstance(error, ParityError)


_IN_CHILD = False


# --- the child's side ----------------------------------------------------------------------


@contextlib.contextmanager
def child_events() -> Iterator[Callable[..., None]]:
    """In a child started by `run_child`: the function that sends one event. Standard output is
    pointed at standard error first, so that nothing the user's code prints reaches the parent's output."""
    global _IN_CHILD
    _IN_CHILD = True
    descriptor = int(os.environ[EVENTS_FD])
    stream = os.fdopen(descriptor, "w", encoding="utf-8", closefd=True)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: str, **fields: Any) -> None:
        stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        stream.flush()

    try:
        yield emit
    except ParityError as error:
        emit("error", kind=type(error).__name__, message=str(error))
    else:
        emit("done")
    finally:
        stream.close()


def plain(value: Any) -> Any:
    """JSON's types only (numpy scalars as numbers, tuples as lists); NaN and infinities kept as floats."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        converted = item()
        return converted if isinstance(converted, (bool, int, float)) else str(converted)
    return str(value)


def read_request() -> dict:
    return json.loads(sys.stdin.read())


# --- the parent's side ---------------------------------------------------------------------


def run_child(module: str, request: dict, *, step_timeout_s: float, what: str,
              on_step: Callable[[str], None] | None = None, fix: str = "") -> list[dict]:
    """Run `python -m module` with `request` on its standard input; return its "result" events.

    Raises the child's own ParityError (as OptionError, with its message), or an OptionError naming
    the step when the child ran past `step_timeout_s` in one step, died (os._exit, a signal), or
    ended without saying it was done. `what` names the user's code in those messages."""
    read_end, write_end = os.pipe()
    environment = {**os.environ, EVENTS_FD: str(write_end)}
    try:
        process = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=sys.stderr.fileno(),
                                   pass_fds=(write_end,), env=environment, start_new_session=True)
    finally:
        os.close(write_end)
    try:
        process.stdin.write(json.dumps(request).encode())
        process.stdin.close()
    except OSError:
        pass
    results, step, started, buffered, finished = [], None, time.monotonic(), b"", None
    try:
        with os.fdopen(read_end, "rb", buffering=0) as events:
            while finished is None:
                limit_s = START_TIMEOUT_S if step is None else step_timeout_s
                remaining = limit_s - (time.monotonic() - started)
                if remaining <= 0:
                    _kill(process)
                    if step is None:
                        raise OptionError(f"parity's child process for {what} did not start within {limit_s:g} s "
                                          "(stopped) before running any of its code: the machine is too loaded to "
                                          "import parity and torch; run again when it is not")
                    raise OptionError(f"{what} did not finish {step} within {step_timeout_s:g} s (stopped); "
                                      f"check it for an endless loop, or allow more time with --timeout{fix}")
                ready, _, _ = select.select([events], [], [], min(remaining, 1.0))
                if not ready:
                    continue
                chunk = events.read(1 << 16)
                if not chunk:
                    break
                buffered += chunk
                if len(buffered) > MAX_EVENT_BYTES:
                    _kill(process)
                    raise OptionError(f"{what} sent more than {MAX_EVENT_BYTES:,} bytes of events without ending one")
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    event = _event(line)
                    kind = event.get("event")
                    if kind == "step":
                        step, started = str(event.get("name", "a step")), time.monotonic()
                        if on_step is not None:
                            on_step(step)
                    elif kind == "result":
                        results.append(event)
                    elif kind in ("error", "done"):
                        finished = event
    except BaseException:
        _kill(process)
        raise
    status = _wait(process)
    if finished is None:
        raise OptionError(f"{what} ended parity's child process during {step or 'its start'} ({describe_status(status)}: os._exit, "
                          f"a C library's exit or a crash) instead of returning; a kernel, port or factory must return "
                          f"its result, not exit{fix}")
    if finished["event"] == "error":
        raise OptionError(str(finished.get("message", "the child process failed")))
    return results


def _event(line: bytes) -> dict:
    try:
        event = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return event if isinstance(event, dict) else {}


def describe_status(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        number = -status
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        return f"killed by {name}"
    return f"exit status {status}"


def _wait(process: subprocess.Popen, seconds: float = 30.0) -> int | None:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        _kill(process)
        return process.returncode


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)   # its session: the child and anything it started
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        process.wait(timeout=10)


# --- memory ---------------------------------------------------------------------------------


def available_memory_bytes(device: str = "cpu") -> int:
    """Free memory where tensors will be made: the device's, or the host's (MemAvailable, and no more
    than this process's address-space limit allows)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    free = 8 << 30   # where /proc/meminfo cannot be read
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
        free = int(line.split()[1]) * 1024
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    return free if limit == resource.RLIM_INFINITY else min(free, limit)
