"""Time the embedded default job (`parity check` with no arguments) and its phases.

    python benchmarks/default_check.py [--repeat N]

Prints wall-clock seconds for the whole command (a fresh process, as a user runs
it) and, in one process, for each phase: loading SmolLM2 in transformers from the
GGUF, the reference capture, the calibration run, llama.cpp's load and capture,
comparison and diagnosis.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time


def time_command(repeat: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (user + system, the child's own) of each run of the command."""
    seconds, cpu_seconds = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "parity", "check"], capture_output=True, check=False)
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"parity check exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return seconds, cpu_seconds


def time_phases() -> dict[str, float]:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from parity.capture.hf.model import load_model, quiet_transformers
    from parity.capture.llamacpp.runner import LlamaCppRunner
    from parity.capture.llamacpp.numerics import llamacpp_activation_rounding
    from parity.capture.gguf.smollm2 import DEFAULT_PROMPT, gguf_path
    from parity.core.calibrate import noise_floors
    from parity.core.compare import CompareConfig, compare
    from parity.diagnose import diagnose

    quiet_transformers()
    phases, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    path = gguf_path()
    reference_model = load_model(path)
    lap("load transformers (from the dequantized cache after a first run)")
    tokens = reference_model.tokenize(DEFAULT_PROMPT)
    lap("load tokenizer, tokenize")
    reference = reference_model.capture(tokens)
    lap(f"capture reference ({len(tokens)} tokens, {len(reference.tensors)} checkpoints)")
    with llamacpp_activation_rounding(reference_model.model, path):
        lowp = reference_model.capture(tokens)
    lap("capture calibration run (llama.cpp rounding emulated)")
    with LlamaCppRunner(path) as runner:
        lap("load llama.cpp")
        candidate = runner.capture(tokens)
        lap("capture llama.cpp")
    config = CompareConfig(noise=noise_floors(reference, lowp))
    diagnose(compare(reference, candidate, config=config), reference, candidate)
    lap("compare (calibrated) and diagnose")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs, cpu = time_command(args.repeat)
    print(f"parity check (default job), {args.repeat} runs: median {statistics.median(runs):.1f} s, "
          f"min {min(runs):.1f} s, max {max(runs):.1f} s wall (target <= 15 s); median {statistics.median(cpu):.1f} s "
          f"CPU, on {os.cpu_count()} CPUs")
    for name, seconds in time_phases().items():
        print(f"  {name:<55} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
