"""A reference split across devices: what capture costs and whether every checkpoint survives the split.

    python benchmarks/placement.py [--layers 30] [--tokens 128] [--gpu-memory 300MiB]

Builds a Llama model of SmolLM2-135M's shape (random weights, saved as safetensors
in a temporary directory), captures it whole on the CPU as the baseline, then
loads it again through accelerate's big-model inference (`load_model(placement=)`,
what `--device/--max-memory/--offload-dir` do) in each placement this machine
allows:
  - cpu + disk:  a CPU cap far below the model's size, the rest offloaded to disk;
  - cuda:0:      the whole model on the GPU (when there is one; the first run also starts CUDA);
  - cuda + cpu:  a GPU cap (--gpu-memory) that leaves the later layers on the CPU.
For each it prints where the modules went, the load and capture seconds (and a plain
forward pass's, without hooks, run after the capture), the peak
GPU memory, the number of checkpoints captured against the baseline's, and the
comparison with the baseline under parity's float32 tolerances (largest rel_l2).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path


def build_model(directory: Path, layers: int) -> Path:
    """A SmolLM2-135M-shaped Llama with random weights, saved to `directory`."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return directory


def run(label: str, directory: Path, tokens: list[int], baseline, placement):
    """Load and capture in one placement, print the figures, and return the trace."""
    import torch

    from parity.capture.hf.model import load_model
    from parity.core.compare import compare

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = load_model(directory, placement=placement)
    loaded = time.perf_counter()
    trace = model.capture(tokens)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    captured = time.perf_counter()
    forward_s = plain_forward_seconds(model.model, tokens)
    device_map = getattr(model.model, "hf_device_map", None) or {"": str(next(model.model.parameters()).device)}
    where = ", ".join(f"{device}: {count}" for device, count in sorted(Counter(map(str, device_map.values())).items()))
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    line = (f"{label:11s} modules [{where}]  load {loaded - started:5.2f} s  capture {captured - loaded:5.2f} s  "
            f"(plain forward {forward_s:5.2f} s)  peak GPU {peak_gpu:7.1f} MiB  checkpoints {len(trace.names)}")
    if baseline is not None:
        comparison = compare(baseline, trace)
        worst = max((r.metrics.rel_l2 for r in comparison.checkpoints if r.metrics), default=0.0)
        line += f"  vs cpu: {comparison.passed_count}/{len(comparison.checkpoints)} within fp32 tolerance, " \
                f"largest rel_l2 {worst:.2e}"
    print(line, flush=True)
    return trace


def plain_forward_seconds(model, tokens: list[int]) -> float:
    """One forward pass with no hooks, as the capture runs it (its input where the model's first weights are)."""
    import torch

    from parity.capture.torch.module import input_ids_of

    input_ids = input_ids_of(tokens, model)
    started = time.perf_counter()
    with torch.no_grad():
        model(input_ids)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (default 30, as SmolLM2-135M)")
    parser.add_argument("--tokens", type=int, default=128, help="token positions (default 128)")
    parser.add_argument("--gpu-memory", default="300MiB", help="GPU cap for the cuda + cpu split (default 300MiB)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from parity.capture.hf.model import quiet_transformers
    from parity.capture.hf.placement import placement_from_options

    quiet_transformers()
    tokens = np.random.default_rng(0).integers(0, 49152, args.tokens).tolist()
    print(f"torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; T={args.tokens}")
    with tempfile.TemporaryDirectory() as scratch:
        directory = build_model(Path(scratch) / "model", args.layers)
        size_mib = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 2**20
        print(f"model: Llama, {args.layers} layers, hidden 576, {size_mib:.0f} MiB of float32 weights")
        baseline = run("cpu", directory, tokens, None, None)
        baseline = run("cpu", directory, tokens, baseline, None)  # the first load warms the file cache
        offload = Path(scratch) / "offload"
        cpu_cap = f"cpu={int(size_mib * 3 // 4)}MiB"  # the embedding and some layers in memory, the rest on disk
        run("cpu + disk", directory, tokens, baseline, placement_from_options(None, cpu_cap, str(offload)))
        if torch.cuda.is_available():
            run("cuda:0", directory, tokens, baseline, placement_from_options("cuda:0", None, None))  # warms CUDA up
            run("cuda:0", directory, tokens, baseline, placement_from_options("cuda:0", None, None))
            split = placement_from_options(None, f"0={args.gpu_memory},cpu=64GiB", None)
            run("cuda + cpu", directory, tokens, baseline, split)


if __name__ == "__main__":
    main()
