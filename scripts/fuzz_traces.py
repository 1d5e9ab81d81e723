"""Fuzz `parity compare REF CAND` with 10,000+ damaged and hostile traces; print what went wrong.

    python scripts/fuzz_traces.py --count 10000                     # mutation fuzzing, seeded
    python scripts/fuzz_traces.py --count 10000 --engine atheris    # coverage-guided (pip install atheris)

Each input (tests/trace_fuzz.py: a valid trace of one of the three forms, mutated, or
random bytes) is written to a fresh directory and compared with a valid reference,
in this process, under an address-space limit and a per-input deadline. Counted:
  tracebacks  an exception other than parity's own errors escaped `parity.cli.main`
  hangs       an input ran past --timeout-s
  multi-line  exit 2 with other than exactly one line on stderr
  noisy       exit 0 or 1 with anything on stderr (a numpy warning, say)
  outside     a file opened outside the input's directory (audit hook on every open)
and the peak resident memory of the whole run. Failing inputs are saved to --crashes.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import io
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


class Hang(Exception):
    pass


class Fuzzer:
    def __init__(self, reference: Path, scratch: Path, timeout_s: float, crashes: Path) -> None:
        from parity.cli import main

        self.main, self.reference, self.scratch, self.timeout_s, self.crashes = main, reference, scratch, timeout_s, crashes
        self.counts: collections.Counter[str] = collections.Counter()
        self.outside: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.allowed: tuple[str, ...] = ()
        self.recording = False
        self.started = time.monotonic()
        sys.addaudithook(self._audit)
        signal.signal(signal.SIGALRM, self._alarm)

    def _alarm(self, *_) -> None:
        raise Hang()

    def _audit(self, event: str, args) -> None:
        if self.recording and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if not path.startswith(self.allowed):
                self.outside[path] += 1

    def run_one(self, data: bytes) -> str:
        import trace_fuzz

        directory = Path(tempfile.mkdtemp(dir=self.scratch))
        outcome = "?"
        try:
            candidate = trace_fuzz.materialize(data, directory)
            self.allowed = (str(directory.resolve()), str(self.reference.resolve()), *_PYTHON_PATHS)
            out, err = io.StringIO(), io.StringIO()
            before = sum(self.outside.values())
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            self.recording = True
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = self.main(["compare", str(self.reference), str(candidate)])
            finally:
                self.recording = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            lines = err.getvalue().splitlines()
            if sum(self.outside.values()) > before:
                outcome = "outside"
            elif code == 2:
                outcome = "exit 2, one line" if len(lines) == 1 and lines[0].startswith("parity: error: ") else "multi-line"
            elif code in (0, 1):
                outcome = f"exit {code}" if not lines else "noisy"
            else:
                outcome = f"exit {code}"
            detail = err.getvalue()[:300]
        except Hang:
            outcome, detail = "hangs", ""
        except BaseException as error:  # noqa: BLE001 - counting every escape is the point
            if isinstance(error, KeyboardInterrupt):
                raise
            outcome, detail = "tracebacks", "".join(traceback.format_exception(error))[-1500:]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        self.counts[outcome] += 1
        if outcome in ("outside", "multi-line", "noisy", "hangs", "tracebacks"):
            self.crashes.mkdir(parents=True, exist_ok=True)
            (self.crashes / f"{outcome.replace(' ', '-')}-{self.counts[outcome]}.bin").write_bytes(data)
            self.examples.setdefault(outcome, detail)
        return outcome

    def summary(self) -> str:
        total = sum(self.counts.values())
        elapsed = time.monotonic() - self.started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        bad = {key: self.counts[key] for key in ("tracebacks", "hangs", "multi-line", "noisy", "outside")}
        lines = [f"{total} inputs in {elapsed:.0f} s ({total / max(elapsed, 1e-9):.0f}/s); peak RSS {peak_mb:.0f} MB",
                 "outcomes: " + ", ".join(f"{key} {value}" for key, value in sorted(self.counts.items())),
                 "failures: " + ", ".join(f"{key} {value}" for key, value in bad.items())]
        if self.outside:
            lines.append("opened outside the trace: " + ", ".join(sorted(self.outside)[:10]))
        for outcome, detail in self.examples.items():
            lines.append(f"first {outcome}: {detail.strip()[-600:]}")
        return "\n".join(lines)


_PYTHON_PATHS = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, str(ROOT / "src"),
                                                      "/usr/lib", "/usr/share", "/usr/local/lib", "/etc/localtime")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help="inputs to run")
    parser.add_argument("--engine", choices=("random", "atheris"), default="random")
    parser.add_argument("--seed", type=int, default=0, help="random engine: the mutation seed")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="per input: past this is a hang")
    parser.add_argument("--address-space-mb", type=int, default=3072, help="limit for this whole process")
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"), help="failing inputs are saved here")
    args = parser.parse_args()

    limit = args.address_space_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    scratch = Path(tempfile.mkdtemp(prefix="parity-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    import trace_corpus
    import trace_fuzz

    reference = trace_corpus.write_reference(scratch)
    if args.engine == "atheris":
        return _atheris(args, reference, scratch)
    fuzzer = Fuzzer(reference, scratch, args.timeout_s, args.crashes)
    for seed_input in trace_fuzz.seeds():  # warm-up: imports happen here, not while opens are audited
        fuzzer.run_one(seed_input)
    fuzzer.counts.clear()
    fuzzer.started = time.monotonic()
    rng = random.Random(args.seed)
    seeds = trace_fuzz.seeds()
    for index in range(args.count):
        fuzzer.run_one(trace_fuzz.random_input(rng, seeds))
        if (index + 1) % 1000 == 0:
            print(f"  {index + 1} inputs, {dict(fuzzer.counts)}", file=sys.stderr, flush=True)
    print(f"engine random (seed {args.seed})")
    print(fuzzer.summary())
    return 0


def _atheris(args, reference: Path, scratch: Path) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install 'parity[fuzz]', or use --engine random", file=sys.stderr)
        return 2
    import trace_fuzz

    with atheris.instrument_imports():
        import parity.core.trace.bounded_json  # noqa: F401
        import parity.core.trace.npy  # noqa: F401
        import parity.core.trace.npz  # noqa: F401
        import parity.core.trace.readers  # noqa: F401
        import parity.core.trace.metadata  # noqa: F401
    fuzzer = Fuzzer(reference, scratch, args.timeout_s, args.crashes)
    corpus = scratch / "atheris-corpus"
    corpus.mkdir()
    for index, seed_input in enumerate(trace_fuzz.seeds()):
        (corpus / f"seed-{index}").write_bytes(seed_input)
        fuzzer.run_one(seed_input)
    fuzzer.counts.clear()
    fuzzer.started = time.monotonic()

    def test_one_input(data: bytes) -> None:
        fuzzer.run_one(bytes(data))
        total = sum(fuzzer.counts.values())
        if total % 1000 == 0 or total == args.count:  # libFuzzer exits without running Python's atexit
            print(f"engine atheris (coverage-guided, libFuzzer mutations of the valid seeds), after {total} inputs")
            print(fuzzer.summary(), flush=True)
        if total == args.count:
            shutil.rmtree(scratch, ignore_errors=True)

    atheris.Setup([sys.argv[0], f"-runs={args.count}", "-max_len=65536", f"-seed={args.seed or 1}", str(corpus)],
                  test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
