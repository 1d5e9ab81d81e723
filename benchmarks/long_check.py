"""Peak memory, time and verdict of `parity check` over long inputs, each length in a fresh process.

    python benchmarks/long_check.py [--tokens 256,1024] [--candidate llamacpp:FILE.gguf] [--model FILE]

The default pair (SmolLM2's GGUF in transformers against the same file in llama.cpp)
over T random token ids, with --decode-steps 0: one forward pass per side plus the
calibration run. Prints, per length: peak RSS of the command's process (GiB), wall
and CPU seconds, the exit code, and how many checkpoints failed. A correct build
must exit 0 at every length.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(tokens: int, model: str | None, candidate: str | None) -> dict:
    draw = random.Random(tokens)
    ids = [draw.randrange(1, 49152) for _ in range(tokens)]
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.json"
        pair = [model, candidate] if model and candidate else []
        command = [sys.executable, "-m", "parity", "check", *pair, "--tokens", ",".join(map(str, ids)),
                   "--decode-steps", "0", "--json", str(report)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall_s = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        failed = None
        if report.exists():
            failed = json.loads(report.read_text())["summary"]["failed"]
        elif done.returncode == 2:
            print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
    return {"tokens": tokens, "peak_rss_gib": after.ru_maxrss / 2**20, "wall_s": wall_s,
            "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "exit": done.returncode, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="256,1024", help="comma-separated lengths")
    parser.add_argument("--model", help="the reference (default: the embedded SmolLM2 GGUF)")
    parser.add_argument("--candidate", help="the candidate (default: the same GGUF in llama.cpp)")
    args = parser.parse_args()
    print(f"{'T':>6} {'peak RSS GiB':>13} {'wall s':>8} {'CPU s':>8} {'exit':>5} {'failed':>7}")
    for tokens in (int(value) for value in args.tokens.split(",")):
        row = run_once(tokens, args.model, args.candidate)
        print(f"{row['tokens']:>6} {row['peak_rss_gib']:>13.2f} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} "
              f"{row['exit']:>5} {row['failed'] if row['failed'] is not None else '-':>7}", flush=True)


if __name__ == "__main__":
    main()
