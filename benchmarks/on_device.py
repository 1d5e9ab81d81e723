"""`parity check --on-device` against the host pass: time, host memory and device memory.

    python benchmarks/on_device.py [--device cuda:0] [--tokens 512] [--layers 30] [--repeat 2]

Builds a Llama of SmolLM2-135M's shape (random weights, in a temporary directory;
see placement.py) and a candidate factory that loads the same weights with
transformers onto the device. Then runs, each in a fresh process, as a user does:

    parity check MODEL factory.py:build --tokens ... --device DEVICE --decode-steps 0 [--on-device]

The candidate is float32, so both runs calibrate (the reference in float64 and
again in float32). It prints, per mode: wall seconds (median of --repeat, the
command as a whole: loads, three forward passes, the metric passes, the report),
peak host RSS (the child's VmHWM) and peak device memory, and the verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from placement import build_model  # noqa: E402

FACTORY = """
import os, torch, transformers
def build(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(os.environ["PARITY_BENCH_DEVICE"]).eval()
"""

# In the child: run the CLI, then print its exit code, peak RSS (VmHWM, KiB) and peak device memory.
CHILD = """
import json, sys, time, torch
from parity.cli import main
started = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - started
peak_kib = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
device_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
print(json.dumps({"code": code, "seconds": seconds, "host_mib": peak_kib / 1024, "device_mib": device_mib}),
      file=sys.stderr)
"""


def run(args: list[str], device: str) -> dict:
    import os

    env = {**os.environ, "PARITY_BENCH_DEVICE": device}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, check=False)
    figures = json.loads(done.stderr.strip().splitlines()[-1])
    figures["wall"] = time.perf_counter() - started
    if figures["code"] not in (0, 1):
        raise SystemExit(f"parity check exited {figures['code']}: {done.stderr[-2000:]}")
    figures["verdict"] = "PASS" if figures["code"] == 0 else "FAIL"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where both models run (default cpu)")
    parser.add_argument("--tokens", type=int, default=512, help="token positions (default 512)")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (default 30, as SmolLM2-135M)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode (default 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        model = build_model(Path(directory) / "model", args.layers)
        factory = Path(directory) / "factory.py"
        factory.write_text(FACTORY)
        tokens = ",".join(str((7 * i + 3) % 49152) for i in range(args.tokens))
        common = ["check", str(model), f"{factory}:build", "--tokens", tokens, "--device", args.device,
                  "--decode-steps", "0", "--json", "-"]
        print(f"SmolLM2-135M-shaped model, {args.layers} layers, T={args.tokens}, both on {args.device}", flush=True)
        results = {}
        for _ in range(args.repeat):
            for mode, extra in (("host traces", []), ("--on-device", ["--on-device"])):
                results.setdefault(mode, []).append(run(common + extra, args.device))
    for mode, runs in results.items():
        print(f"{mode:12s} {runs[0]['verdict']}  {statistics.median(r['seconds'] for r in runs):6.2f} s  "
              f"peak host RSS {max(r['host_mib'] for r in runs):7.0f} MiB  "
              f"peak device memory {max(r['device_mib'] for r in runs):7.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
