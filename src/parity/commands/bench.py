"""`parity bench`: prefill and decode speed and peak memory, candidate against reference.

Each side runs in a process of its own (`python -m parity.commands.bench SIDE-JSON`), so
that its peak resident memory is its own and neither warms the other's caches.
In it: load the model, note the resident memory, then per repeat prefill a
prompt of fixed token ids in one batch (fresh cache) and decode fixed tokens one
at a time through the cache. Warm-up repeats are run and dropped; the medians
of the rest are reported. Both sides get the same threads and the same tokens.

A side is any candidate that can be timed (capture/candidate.py, capability "speed"):
a model directory or .gguf (transformers, at --dtype), llamacpp:FILE.gguf, or
FILE.py:FACTORY (a torch.nn.Module; decoding timed where its forward takes a cache).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from parity.core.errors import CaptureError, OptionError
from parity.core.results import BenchReport


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    decode_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    dtype: str = "float32"
    device: str = "cpu"


def run_bench(model: str, candidate: str, options: BenchOptions = BenchOptions(), progress=None) -> BenchReport:
    """Both sides, one after the other, each in its own process."""
    if not os.path.exists(model):
        raise OptionError(f"{model}: no such model directory or .gguf file")
    _check_candidate(candidate)
    results = {}
    for side, spec in (("reference", model), ("candidate", candidate)):
        if progress is not None:
            progress.step(f"bench: {side} {spec}")
        results[side] = _run_side(spec, model, options)
    return BenchReport(reference=results["reference"], candidate=results["candidate"],
                       options={**options.__dict__, "tokens": "fixed ids, the same on both sides"})


def _check_candidate(spec: str) -> None:
    """A missing file or a side that cannot be timed is found before either side starts, not after the first
    has run."""
    from parity.capture.candidate import parse_candidate

    parsed = parse_candidate(spec).check()
    if not parsed.offers("speed"):
        raise OptionError(f"{spec} is {parsed.written}, which cannot be timed; give a model directory or .gguf, "
                          "llamacpp:FILE.gguf or FILE.py:FACTORY")


def _run_side(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    request = json.dumps({"spec": spec, "model": model, "options": options.__dict__})
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "TQDM_DISABLE": "1"}
    process = subprocess.run([sys.executable, "-m", "parity.commands.bench", request], capture_output=True, text=True,
                             env=environment)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        last = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise CaptureError(f"benchmarking {spec} failed: {last}")
    return json.loads(lines[-1])


# --- in the side's own process ------------------------------------------------------


def measure_side(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    """Load `spec`, then time prefill and decode; peak memory of this process."""
    from parity.capture.candidate import CandidateContext, open_candidate
    from parity.capture.hf.model import quiet_transformers

    quiet_transformers()
    baseline_mib = _current_rss_mib()
    with open_candidate(spec, CandidateContext(model_path=model, dtype=options.dtype), needs=("speed",)) as side:
        runner = side.speed_runner(options)
        loaded_mib = _current_rss_mib()
        vocab = runner.vocab_size
        prompt = [(7 + 31 * i) % vocab for i in range(options.prompt_tokens)]
        continuation = [(11 + 17 * i) % vocab for i in range(options.decode_tokens)]
        prefill_s, decode_s = [], []
        for repeat in range(options.warmup + options.repeats):
            prefill, decode = runner.time(prompt, continuation)
            if repeat >= options.warmup:
                prefill_s.append(prefill)
                decode_s.append(decode)
        backend = side.backend
    prefill_median = statistics.median(prefill_s)
    decode_median = statistics.median(decode_s) if all(t is not None for t in decode_s) else None
    return {"spec": spec, "kind": backend, "description": runner.description,
            "prefill_s": prefill_s, "decode_s": decode_s,
            "prefill_tokens_per_s": options.prompt_tokens / prefill_median,
            "decode_tokens_per_s": options.decode_tokens / decode_median if decode_median else None,
            "decode_note": runner.decode_note,
            "rss_before_load_mib": baseline_mib, "rss_after_load_mib": loaded_mib,
            "peak_rss_mib": _peak_rss_mib(), **runner.device_memory()}


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(argv: list[str]) -> int:
    from parity.core.errors import ParityError

    request = json.loads(argv[0])
    try:
        result = measure_side(request["spec"], request["model"], BenchOptions(**request["options"]))
    except ParityError as error:
        print(f"parity: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
