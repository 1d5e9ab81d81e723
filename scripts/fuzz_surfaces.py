"""Fuzz the surfaces beside traces: GGUF headers, server answers, kernels and factories; print what went wrong.

    python scripts/fuzz_surfaces.py                                  # 10,000 / 10,000 / 10,000 / 1,000, seeded
    python scripts/fuzz_surfaces.py --gguf 500 --server 500 --chat 500 --user-code 50 --seed 3

Each input runs in a fork of this warm process (tests/fuzz_harness.py), so that one that aborts,
hangs or kills its process is counted and the run goes on:
  gguf       the seed GGUF (tests/corpus_gguf/) with its header mutated, through `capture MODEL`,
             `capture llamacpp:MODEL` and `tokens MODEL llamacpp:MODEL` (tests/gguf_corpus.py)
  server     an honest server's answer, mutated, through what `check MODEL URL` does with it
             (tests/server_fuzz.py); the reference is tiny_models' llama
  chat       an honest chat server's answer (OpenAI's shape and mistral.rs's), mutated, through what
             `check MODEL URL/v1/chat/completions` does with it (tests/server_fuzz.py)
  user-code  a random softmax kernel of 1-3 behaviours through `kernel` (--json -), or a factory
             through `sanity` (tests/user_code.py)
Counted (all must be 0): silent passes (a pass the surface's oracle says cannot be: an unsound
GGUF, an answer that cannot be compared, a kernel or factory that is wrong), tracebacks, multi-line
errors, hangs, aborts of the parity process, files opened outside the input's own paths.
Failing inputs are saved to --crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = str(ROOT / "src")   # the children parity starts (probes, kernels) import this parity
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=int, default=10_000, help="GGUF headers to run")
    parser.add_argument("--server", type=int, default=10_000, help="server answers to run")
    parser.add_argument("--chat", type=int, default=10_000, help="chat server answers to run")
    parser.add_argument("--user-code", type=int, default=1_000, help="kernels and factories to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"), help="failing inputs are saved here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)   # forks of a process whose OpenMP threads ran would hang
    import fuzz_harness
    import fuzz_surfaces

    scratch = Path(tempfile.mkdtemp(prefix="parity-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.environ.update(PARITY_CACHE=str(scratch / "cache"), HF_HOME=str(scratch / "hf"), TQDM_DISABLE="1")
    failures = 0
    try:
        for name, count in (("gguf", args.gguf), ("server", args.server), ("chat", args.chat),
                            ("user-code", args.user_code)):
            if count <= 0:
                continue
            surface = fuzz_surfaces.SURFACES[name]()
            surface.prepare(scratch)
            rng = random.Random(args.seed)
            tally = fuzz_harness.Tally()
            for index in range(count):
                item = surface.make(rng)
                outcome, detail = surface.run_one(item)
                tally.add(outcome, detail)
                if outcome in fuzz_harness.BAD or outcome.startswith("unexpected"):
                    _save(args.crashes / name, f"{outcome.replace(' ', '-')}-{index}", item, detail)
                if (index + 1) % max(count // 10, 1) == 0:
                    print(f"  {name}: {index + 1} inputs, {dict(tally.counts)}", file=sys.stderr, flush=True)
            print(tally.summary(name), flush=True)
            failures += tally.bad
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the fuzzing process {peak_mb:.0f} MB; bad outcomes in all: {failures}")
    return 0


def _save(directory: Path, name: str, item, detail: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(item, bytes):
        (directory / f"{name}.bin").write_bytes(item)
    else:
        (directory / f"{name}.json").write_text(json.dumps(list(item)))
    (directory / f"{name}.txt").write_text(detail)


if __name__ == "__main__":
    sys.exit(main())
