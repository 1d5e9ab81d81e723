"""Peak memory of `parity compare` as traces grow: it follows the largest checkpoint pair, not the total.

    python benchmarks/lazy_compare_memory.py [--tensor-mb 32] [--counts 4,16] [--dir /tmp]

Writes, for each count N, two parity traces of N float32 checkpoints of --tensor-mb
each, then runs `parity compare` on them in a fresh process and prints its peak
resident memory (wait4's ru_maxrss) against issue 13's bound, 2 x the largest pair
+ 300 MB. Two candidates: one that fails (values drawn independently of the
reference's: every checkpoint fails, no detector explains it, so the whole
diagnosis runs, no_known_cause included) and one that passes (the reference plus
1e-6 relative noise: no diagnosis beyond the metrics).
Traces are read lazily (core/trace/lazy.py): each tensor is memory-mapped or read
when the comparison reaches it and dropped after, so the peak should stay flat as N
grows. The metric pass works in cache-sized chunks (core/metrics.py); the diagnosis
widens a failing pair to float64 only below 32M elements (diagnose/context.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_pair(directory: Path, count: int, tensor_mb: int) -> tuple[Path, Path]:
    import numpy as np

    from parity.core.trace import make_trace, save_trace

    rng = np.random.default_rng(0)
    width = 1024
    rows = tensor_mb * 2**20 // (4 * width)
    names = [f"layers.{i}.out" for i in range(count)]
    paths = []
    for side in ("reference", "candidate", "passing"):
        tensors = {}
        for i, name in enumerate(names):
            if side == "candidate":  # a fresh draw: unrelated to the reference, so it fails
                tensors[name] = rng.standard_normal((rows, width), dtype=np.float32)
            else:  # the reference, and the reference plus 1e-6 relative noise, from one seed per checkpoint
                values = np.random.default_rng(i).standard_normal((rows, width), dtype=np.float32)
                noise = 1e-6 * np.random.default_rng(10_000 + i).standard_normal((rows, width), dtype=np.float32)
                tensors[name] = values + noise * values if side == "passing" else values
        path = directory / f"{side}-{count}.safetensors"
        save_trace(make_trace(tensors, {"tokens": list(range(rows)), "producer": side}), path, overwrite=True)
        paths.append(path)
        del tensors
    return paths[0], paths[1]


def write_pair_elsewhere(directory: Path, count: int, tensor_mb: int) -> tuple[Path, Path]:
    """write_pair in a child process: a forked child's ru_maxrss starts from its parent's resident size,
    so the process that measures must never have held the traces itself."""
    subprocess.run([sys.executable, __file__, "--write", str(directory), str(count), str(tensor_mb)], check=True)
    return directory / f"reference-{count}.safetensors", directory / f"candidate-{count}.safetensors"


def peak_rss_mb(reference: Path, candidate: Path) -> tuple[float, float, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "parity.cli", "compare", str(reference), str(candidate)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensor-mb", type=int, default=32)
    parser.add_argument("--counts", default="4,16")
    parser.add_argument("--dir", default=None, help="where to write the traces (deleted after)")
    parser.add_argument("--write", nargs=3, metavar=("DIR", "COUNT", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_pair(Path(args.write[0]), int(args.write[1]), int(args.write[2]))
        return
    directory = Path(tempfile.mkdtemp(prefix="parity-lazy-", dir=args.dir))
    try:
        print(f"{'tensors':>7} {'each trace':>11} {'largest pair':>13} {'candidate':>9} {'peak RSS':>9} "
              f"{'bound':>7} {'seconds':>8} exit")
        for count in map(int, args.counts.split(",")):
            reference, candidate = write_pair_elsewhere(directory, count, args.tensor_mb)
            passing = directory / f"passing-{count}.safetensors"
            bound = 2 * (2 * args.tensor_mb) + 300  # MiB: 2 x the largest pair + 300
            for label, other in (("fails", candidate), ("passes", passing)):
                rss, seconds, code = peak_rss_mb(reference, other)
                print(f"{count:>7} {reference.stat().st_size / 2**20:>8.0f} MB {2 * args.tensor_mb:>10} MB "
                      f"{label:>9} {rss:>6.0f} MB {bound:>4.0f} MB {seconds:>8.1f} {code}"
                      f"{'' if rss <= bound else '  over the bound'}")
            for path in (reference, candidate, passing):
                path.unlink()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
