"""A 7B-class model on a CPU machine: `parity check` of it against itself, the reference in float64 from disk.

    python benchmarks/big_model.py --directory DIR [--layers 32] [--tokens 16] [--max-memory cpu=1GiB]

Builds (once, in DIR) a Llama of Llama-2-7B's shape: 32 layers, hidden size 4,096,
MLP 11,008, 32 heads, a vocabulary of 32,000; 6.74B parameters with random weights,
written a layer at a time as bfloat16 safetensors (13.5 GB, never whole in memory).
Then, each in a fresh process:
  forward float64, forward bfloat16: one plain forward pass (no hooks), loaded
      through accelerate's disk offload as the check loads it: the least the
      check's passes can take;
  check, PyTorch candidate: `parity check DIR DIR --candidate-dtype bfloat16
      --max-memory ... --offload-dir ... --decode-steps 0`: the reference in
      float64, its calibration run and the candidate in bfloat16; every weight
      read from the bfloat16 safetensors and upcast as its module runs (accelerate
      reads offloaded weights from the model's own files, one module at a time),
      so the model is never held whole in any precision;
  capture + check, trace-file candidate: the candidate captured to a trace in
      bfloat16 (`parity capture --dtype bfloat16`), then `parity check DIR TRACE`;
  with --planted LAYER:SCALE,..., a check of a copy whose layer LAYER input norm
      weight is multiplied by SCALE (the report's first divergence and cause, and
      the planted checkpoint's error against its calibrated bound, are printed).
Prints, for each: peak RSS of its process (GiB), wall seconds, the exit code and
the checkpoints compared and failed; and each check's wall time over the forward
passes it needs (one in float64, two in bfloat16: calibration and candidate; the
trace-file check needs one of each, its capture one bfloat16) as a ratio.

Memory: the weights of one module at a time in float64 (the largest, the output
projection, 32,000 x 4,096 x 8 B = 1 GiB), what --max-memory keeps resident, and
both traces: O(layers x T x hidden) (T x T per head for attention probabilities).
Time: each pass reads every weight from disk (the page cache after the first).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
             num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
             tie_word_embeddings=False)
INDEX = "model.safetensors.index.json"


def build(directory: Path, layers: int) -> None:
    """The model's config and bfloat16 weights, one safetensors file per layer (plus one for the embeddings and
    one for the head), each tensor drawn as transformers initialises a Llama (normal, std 0.02; norms at 1)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    index = directory / INDEX
    if index.exists() and json.loads((directory / "config.json").read_text())["num_hidden_layers"] == layers:
        print(f"model: {directory} (built before)", flush=True)
        return
    directory.mkdir(parents=True, exist_ok=True)
    config = transformers.LlamaConfig(num_hidden_layers=layers, **SHAPE)
    config.dtype = "bfloat16"
    config.save_pretrained(directory)
    hidden, mlp, vocab = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    generator = torch.Generator().manual_seed(0)

    def normal(*shape):
        return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=generator)

    parts = [("embed", {"model.embed_tokens.weight": normal(vocab, hidden)})]
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        parts.append((f"layer{layer}", lambda prefix=prefix: {
            **{f"{prefix}self_attn.{name}_proj.weight": normal(hidden, hidden) for name in "qkvo"},
            f"{prefix}mlp.gate_proj.weight": normal(mlp, hidden), f"{prefix}mlp.up_proj.weight": normal(mlp, hidden),
            f"{prefix}mlp.down_proj.weight": normal(hidden, mlp),
            f"{prefix}input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
            f"{prefix}post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)}))
    parts.append(("head", lambda: {"model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                                   "lm_head.weight": normal(vocab, hidden)}))
    weight_map, total = {}, 0
    started = time.perf_counter()
    for number, (label, tensors) in enumerate(parts):
        tensors = tensors() if callable(tensors) else tensors
        name = f"model-{number + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file(tensors, directory / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        total += sum(tensor.numel() * 2 for tensor in tensors.values())
        del tensors
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    print(f"model: {directory}: {total / 2 / 1e9:.2f}B parameters, {total / 2**30:.1f} GiB of bfloat16, "
          f"built in {time.perf_counter() - started:.0f} s", flush=True)


def planted(directory: Path, layer: int, scale: float) -> Path:
    """A copy of the model (its other files linked, not copied) whose layer `layer` input norm weight is multiplied
    by `scale`."""
    import torch
    from safetensors.torch import load_file, save_file

    copy = directory.parent / f"{directory.name}-planted-{layer}-{scale}"
    copy.mkdir(exist_ok=True)
    weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
    name = f"model.layers.{layer}.input_layernorm.weight"
    for file in directory.iterdir():
        target = copy / file.name
        if target.exists() or target.is_symlink():
            target.unlink()
        if file.name != weight_map[name]:
            target.symlink_to(file)
    tensors = load_file(directory / weight_map[name])
    tensors[name] = (tensors[name].float() * scale).to(torch.bfloat16)
    save_file(tensors, copy / weight_map[name], metadata={"format": "pt"})
    return copy


def forward(directory: Path, dtype: str, tokens: list[int], max_memory: str, offload: Path) -> None:
    """One plain forward pass (no hooks) loaded as the check loads it; prints its seconds as JSON."""
    import torch

    from parity.capture.hf.model import load_model
    from parity.capture.hf.placement import placement_from_options

    started = time.perf_counter()
    model = load_model(directory, dtype=dtype, placement=placement_from_options(None, max_memory, str(offload)))
    loaded = time.perf_counter()
    with torch.no_grad():
        model.model(torch.tensor([tokens]))
    print(json.dumps({"load_s": loaded - started, "forward_s": time.perf_counter() - loaded}))


def measured(command: list[str]) -> dict:
    """Run `command` in a fresh process: its exit code, wall seconds, its own peak RSS and standard output."""
    import os
    import tempfile

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        stdout.seek(0), stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        print(errors[-3000:], file=sys.stderr)
    return {"exit": code, "wall_s": wall, "peak_gib": usage.ru_maxrss / 2**20, "stdout": output}


def checkpoints(report: Path, watched: str | None = None) -> str:
    if not report.exists():
        return "no report"
    document = json.loads(report.read_text())
    rows = document["checkpoints"]
    passed = sum(1 for row in rows if row["status"] == "pass")
    first = document.get("first_divergence") or {}
    planted = next((row for row in rows if row["name"] == watched), None) if watched else None
    at = ""
    if planted is not None and planted["metrics"] and planted["tolerance"]:
        at = (f"; {watched}: rel_l2 {planted['metrics']['rel_l2']:.3g}, noise floor "
              f"{planted['tolerance']['noise_rel_l2']:.3g}, bound {planted['tolerance']['max_rel_l2']:.3g}")
    cause = next((diagnosis.get("cause") for diagnosis in document.get("diagnoses") or []), None)
    return (f"{document['verdict']}: {passed}/{len(rows)} checkpoints within tolerance"
            + (", calibrated" if document["calibrated"] else ", not calibrated")
            + (f"; first divergence {first.get('checkpoint')}, cause {cause}" if first else "") + at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--directory", type=Path, required=True, help="where the model is built (13.5 GB)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--max-memory", default="cpu=1GiB", help="accelerate's cap on resident weights")
    parser.add_argument("--planted", metavar="LAYER:SCALE,...",
                        help="also check copies whose layer LAYER input norm weight is multiplied by SCALE")
    parser.add_argument("--forward", choices=("float64", "bfloat16"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    draw = random.Random(args.tokens)
    tokens = [draw.randrange(1, SHAPE["vocab_size"]) for _ in range(args.tokens)]
    offload = args.directory.parent / f"{args.directory.name}-offload"
    if args.forward:
        forward(args.directory, args.forward, tokens, args.max_memory, offload)
        return
    build(args.directory, args.layers)
    ids = ",".join(map(str, tokens))
    placement = ["--max-memory", args.max_memory, "--offload-dir", str(offload)]
    passes = {}
    for dtype in ("float64", "bfloat16"):
        run = measured([sys.executable, __file__, "--directory", str(args.directory), "--tokens", str(args.tokens),
                        "--max-memory", args.max_memory, "--forward", dtype])
        seconds = json.loads(run["stdout"].strip().splitlines()[-1])
        passes[dtype] = seconds["load_s"] + seconds["forward_s"]
        print(f"forward {dtype:8s}  load {seconds['load_s']:6.1f} s  forward {seconds['forward_s']:6.1f} s  "
              f"peak RSS {run['peak_gib']:5.2f} GiB", flush=True)
    parity = [sys.executable, "-m", "parity"]
    report = args.directory.parent / "big-model-report.json"
    trace = args.directory.parent / "big-model-candidate.safetensors"
    # (label, command, the seconds of the passes it needs, the checkpoint a planted bug is in)
    runs = [
        ("check, PyTorch candidate", [*parity, "check", str(args.directory), str(args.directory),
                                      "--candidate-dtype", "bfloat16"], passes["float64"] + 2 * passes["bfloat16"],
         None),
        ("capture bfloat16 trace", [*parity, "capture", str(args.directory), "--dtype", "bfloat16", "-o", str(trace)],
         passes["bfloat16"], None),
        ("check, trace candidate", [*parity, "check", str(args.directory), str(trace)],
         passes["float64"] + passes["bfloat16"], None),
    ]
    for plant in filter(None, (args.planted or "").split(",")):
        layer, _, scale = plant.partition(":")
        bug = planted(args.directory, int(layer), float(scale or 1.05))
        runs.append((f"check, planted {plant}", [*parity, "check", str(args.directory), str(bug),
                                                  "--candidate-dtype", "bfloat16"],
                     passes["float64"] + 2 * passes["bfloat16"], f"layers.{int(layer)}.attn_norm"))
    for label, command, needed, watched in runs:
        checking = command[3] == "check"
        extra = ["--json", str(report), "--decode-steps", "0"] if checking else []
        run = measured([*command, "--tokens", ids, *placement, "--force", *extra])
        verdict = checkpoints(report, watched) if checking else "trace written" if trace.exists() else "no trace"
        print(f"{label:25s} exit {run['exit']}  wall {run['wall_s']:6.1f} s  = {run['wall_s'] / needed:4.2f}x the "
              f"passes it needs ({needed:5.1f} s)  peak RSS {run['peak_gib']:5.2f} GiB  {verdict}", flush=True)
        report.unlink(missing_ok=True)
    trace.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
