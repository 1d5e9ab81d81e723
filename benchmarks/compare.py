"""`parity compare` against the floor, and its peak memory, on SmolLM2-135M-shaped traces.

    python benchmarks/compare.py [--tokens 128] [--repeat 5]
    python benchmarks/compare.py --gigabytes 30     # two traces of 30 GB each: bounded memory

The traces hold every checkpoint a SmolLM2-135M capture holds (30 layers, hidden
576, 9 query and 3 KV heads, MLP 1536, vocabulary 49152), filled with random
values; the candidate is the reference plus noise. They are written one tensor at
a time, so traces larger than this machine's memory can be made.

The floor is what comparing by hand costs: read both tensors of each checkpoint
from the files and take one numpy pass over the pair (`max |c - r|`). Both are
timed alternately in the same run, the same way, and the ratio of the medians is
printed twice:
  - each in a fresh process, as a user runs them (timed from after the imports);
  - both in one long-lived process, each run once before it is timed. A warm
    process reuses the memory of the pass before (glibc keeps freed blocks), which
    makes the floor's temporaries 2-4x cheaper than in a fresh one.
`parity compare`'s peak RSS is read from the operating system (the child's VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 30, 576, 9, 3, 64, 1536, 49152


def checkpoint_shapes(tokens: int, layers: int = LAYERS) -> dict[str, tuple[int, ...]]:
    """The checkpoints of a SmolLM2-135M trace over `tokens` tokens, in data-flow order."""
    shapes: dict[str, tuple[int, ...]] = {"embed": (tokens, HIDDEN)}
    for i in range(layers):
        per_layer = {
            "attn_norm": (tokens, HIDDEN), "q": (tokens, HEADS * HEAD_DIM), "k": (tokens, KV_HEADS * HEAD_DIM),
            "v": (tokens, KV_HEADS * HEAD_DIM), "q_rope": (tokens, HEADS * HEAD_DIM),
            "k_rope": (tokens, KV_HEADS * HEAD_DIM), "attn_probs": (HEADS, tokens, tokens),
            "attn_ctx": (tokens, HEADS * HEAD_DIM), "attn_out": (tokens, HIDDEN), "resid_mid": (tokens, HIDDEN),
            "mlp_norm": (tokens, HIDDEN), "mlp_gate": (tokens, MLP), "mlp_up": (tokens, MLP),
            "mlp_act": (tokens, MLP), "mlp_out": (tokens, HIDDEN), "out": (tokens, HIDDEN),
        }
        shapes.update({f"layers.{i}.{kind}": shape for kind, shape in per_layer.items()})
    shapes["final_norm"] = (tokens, HIDDEN)
    shapes["logits"] = (tokens, VOCAB)
    return shapes


def write_pair(directory: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> tuple[Path, Path]:
    """A reference and a candidate trace (float32 safetensors), written one tensor at a time."""
    paths = directory / "reference.safetensors", directory / "candidate.safetensors"
    headers = [_header(shapes, {"format": "parity-trace/1", "dtype": "float32"}) for _ in paths]
    files = [open(path, "wb") for path in paths]
    try:
        for file, header in zip(files, headers):
            file.write(struct.pack("<Q", len(header)) + header)
        rng = np.random.default_rng(seed)
        for shape in shapes.values():
            reference = rng.standard_normal(shape, dtype=np.float32)
            candidate = reference + np.float32(1e-6) * rng.standard_normal(shape, dtype=np.float32)
            files[0].write(reference.tobytes())
            files[1].write(candidate.tobytes())
    finally:
        for file in files:
            file.close()
    return paths


def _header(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8)


def floor_seconds(reference: Path, candidate: Path) -> float:
    """Read each checkpoint pair from the files and take one numpy pass over it."""
    started = time.perf_counter()
    entries = [_entries(reference), _entries(candidate)]
    with open(reference, "rb") as reference_file, open(candidate, "rb") as candidate_file:
        for name, (start, shape) in entries[0].items():
            reference_tensor = _read(reference_file, start, shape)
            candidate_tensor = _read(candidate_file, entries[1][name][0], shape)
            float(np.max(np.abs(candidate_tensor - reference_tensor)))
    return time.perf_counter() - started


def _entries(path: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return {name: (8 + length + entry["data_offsets"][0], tuple(entry["shape"]))
            for name, entry in header.items() if name != "__metadata__"}


def _read(file, start: int, shape: tuple[int, ...]) -> np.ndarray:
    file.seek(start)
    return np.fromfile(file, dtype="<f4", count=int(np.prod(shape))).reshape(shape)


# The child's own peak (VmHWM, in KiB). Not ru_maxrss: a spawned child's ru_maxrss starts from the
# resident size of the parent it was forked from, which here holds the traces it just wrote.
_PEAK_KIB = ("next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))")


def floor_run(reference: Path, candidate: Path) -> float:
    """Seconds of the floor in a fresh process, timed from after its imports, as compare_run times parity."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from compare import "
              "floor_seconds; print(floor_seconds(Path(sys.argv[2]), Path(sys.argv[3])))")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(reference), str(candidate)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def warm_runs(reference: Path, candidate: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of the floor and of `parity compare`, alternately, in one process that ran each once before."""
    script = ("import contextlib, io, json, sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
              "from compare import floor_seconds; from parity.cli import main\n"
              "reference, candidate, repeat = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])\n"
              "def compare():\n"
              "    started = time.perf_counter()\n"
              "    with contextlib.redirect_stdout(io.StringIO()):\n"
              "        main(['compare', str(reference), str(candidate), '--json', '-'])\n"
              "    return time.perf_counter() - started\n"
              "floor_seconds(reference, candidate); compare()\n"
              "pairs = [(floor_seconds(reference, candidate), compare()) for _ in range(repeat)]\n"
              "print(json.dumps(pairs))")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(reference), str(candidate),
                           str(repeat)], capture_output=True, text=True, check=True)
    pairs = json.loads(done.stdout.strip().splitlines()[-1])
    return [floor for floor, _ in pairs], [seconds for _, seconds in pairs]


def compare_run(reference: Path, candidate: Path) -> tuple[float, float, int]:
    """Seconds and peak RSS (MiB) of `parity compare` in a fresh process, and its exit code."""
    script = ("import sys, time; from parity.cli import main; started = time.perf_counter(); "
              "code = main(['compare', sys.argv[1], sys.argv[2], '--json', '-']); "
              f"print(time.perf_counter() - started, {_PEAK_KIB}, code, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script, str(reference), str(candidate)],
                          capture_output=True, text=True, check=False)
    seconds, peak_kib, code = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(peak_kib) / 1024, int(code)


def baseline_rss_mib() -> float:
    """Peak RSS of a process that only imports parity's CLI: what any run costs before its data."""
    script = f"import parity.cli; print({_PEAK_KIB})"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="token positions per trace (default 128)")
    parser.add_argument("--repeat", type=int, default=5, help="paired runs (default 5)")
    parser.add_argument("--gigabytes", type=float, help="instead: make each trace about this large, by layers")
    parser.add_argument("--directory", help="where to write the traces (default: a temporary directory)")
    args = parser.parse_args()

    shapes = checkpoint_shapes(args.tokens)
    if args.gigabytes:
        per_layer = sum(4 * np.prod(s) for n, s in checkpoint_shapes(args.tokens, 1).items() if n.startswith("layers."))
        shapes = checkpoint_shapes(args.tokens, max(1, int(args.gigabytes * 2**30 // per_layer)))
    largest_pair_mib = max(2 * 4 * np.prod(shape) for shape in shapes.values()) / 2**20
    with tempfile.TemporaryDirectory(dir=args.directory) as directory:
        started = time.perf_counter()
        reference, candidate = write_pair(Path(directory), shapes)
        size_mib = os.path.getsize(reference) / 2**20
        print(f"two traces of {size_mib:,.0f} MiB each ({len(shapes)} checkpoints, T={args.tokens}), "
              f"written in {time.perf_counter() - started:.1f} s")
        floors, compares, peaks = [], [], []
        for _ in range(1 if args.gigabytes else args.repeat):
            floors.append(floor_run(reference, candidate))
            seconds, peak_mib, code = compare_run(reference, candidate)
            if code not in (0, 1):
                raise SystemExit(f"parity compare exited {code}")
            compares.append(seconds)
            peaks.append(peak_mib)
        warm = None if args.gigabytes else warm_runs(reference, candidate, args.repeat)
    baseline = baseline_rss_mib()
    bound = 2 * largest_pair_mib + 300
    _print_ratio("each in a fresh process", floors, compares, size_mib)
    if warm is not None:
        _print_ratio("both in one warm process", *warm, size_mib)
    print(f"peak RSS: {max(peaks):,.0f} MiB (a process importing parity: {baseline:,.0f} MiB); largest checkpoint "
          f"pair {largest_pair_mib:,.0f} MiB -> bound 2x + 300 = {bound:,.0f} MiB: "
          f"{'within' if max(peaks) <= bound else 'OVER'}")


def _print_ratio(how: str, floors: list[float], compares: list[float], size_mib: float) -> None:
    floor, measured = statistics.median(floors), statistics.median(compares)
    print(f"{how}: floor (read + one numpy pass per pair) {floor:.3f} s, {2 * size_mib / floor:,.0f} MiB/s; "
          f"parity compare {measured:.3f} s, {2 * size_mib / measured:,.0f} MiB/s -> {measured / floor:.2f}x "
          f"the floor (target <= 1.5x)")

if __name__ == "__main__":
    main()
