"""Peak memory, time and verdict of `parity check` over long inputs, each length in a fresh process.

    python benchmarks/long_check.py [--tokens 256,1024] [--candidate llamacpp:FILE.gguf] [--model FILE]
    python benchmarks/long_check.py --tokens 1024 --planted rope_base
    python benchmarks/long_check.py --tokens 12 --decode-steps 512
    python benchmarks/long_check.py --tokens 4096 --checkpoints '*,!*.attn_probs'
    python benchmarks/long_check.py --tokens 8192 --stages
    python benchmarks/long_check.py --tokens 8192 --port --stages
    python benchmarks/long_check.py --tokens 8192 --port row_blocked_bfloat16 --stages
    python benchmarks/long_check.py --tokens 2048 --transformers --decode-steps 4 --stages
    python benchmarks/long_check.py --tokens 16,1024 --onnx --decode-steps 4

The default pair (SmolLM2's GGUF in transformers against the same file in llama.cpp)
over T random token ids, with --decode-steps 0: one forward pass per side plus the
calibration run (--decode-steps N adds greedy decoding of N tokens on both sides and
token-by-token decoding through llama.cpp's cache against its full pass at every
step). Prints, per length: peak RSS of the command's process (GiB), wall
and CPU seconds, the exit code, and how many checkpoints failed of how many compared. A correct build
must exit 0 at every length. With --planted rope_base the candidate is a copy of
the GGUF whose RoPE base (llama.rope.freq_base) is 5% larger, run by llama.cpp
against the unchanged reference: a bug that grows with position, which must fail
(exit 1) at every length; the first failing checkpoint and the named cause are
printed too. --checkpoints is passed to the check (e.g. to leave the attention
probabilities out). With --port the candidate is the from-scratch PyTorch port
(examples/scratch_llama.py:row_blocked, float32, attention 512 query rows at a time, each
block handed to its probe; --port FACTORY names another of its factories) against the same
weights: the GGUF as transformers reads it, saved as a float32 model directory, is both the
reference and the port's weights; the port's own forward over the same ids is then also run
in a fresh process without a check (its weights, what it makes and returns, torch), and the
check's peak is printed against it. With --transformers both are that model directory in
transformers: a transformers candidate decodes through its cache, and runs padded batches
(over the prompt's first tokens, past 256 MiB of logits). With --onnx the candidate is that
model directory built by onnxruntime-genai's model builder in float32 (the build not timed),
run in onnxruntime, decoding through its own cache.
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


def planted_rope_base(directory: Path, factor: float = 1.05) -> tuple[str, str]:
    """(reference, candidate): the embedded GGUF, and a copy of it with its RoPE base multiplied by `factor`."""
    import shutil

    from gguf import GGUFReader

    from parity.capture.gguf.smollm2 import gguf_path

    original = gguf_path()
    copy = directory / "rope-base-planted.gguf"
    shutil.copyfile(original, copy)
    reader = GGUFReader(copy, "r+")
    field = reader.fields["llama.rope.freq_base"]
    field.parts[field.data[0]][0] *= factor
    reader.data.flush()
    return str(original), f"llamacpp:{copy}"


def smollm2_directory(directory: Path) -> str:
    """The embedded SmolLM2 GGUF as transformers reads it (float32), saved as a model directory whose
    safetensors a from-scratch port reads its weights from."""
    from parity.capture.gguf.cache import save_dequantized
    from parity.capture.gguf.smollm2 import gguf_path
    from parity.capture.hf.model import load_model

    saved = directory / "smollm2"
    saved.mkdir()
    # transformers will not save a model it read from a GGUF itself (its first load, before parity's cache holds it)
    save_dequantized(load_model(gguf_path(), dtype="float32").model, saved)
    return str(saved)


def smollm2_onnx(directory: Path) -> tuple[str, str]:
    """(reference, candidate): SmolLM2 saved as a model directory with its tokenizer, and its onnxruntime-genai
    build in float32."""
    from parity.capture.gguf.smollm2 import gguf_path
    from parity.capture.hf.model import load_tokenizer

    saved = smollm2_directory(directory)
    load_tokenizer(gguf_path()).save_pretrained(saved)
    config = Path(saved) / "config.json"       # the builder picks its model by the config's architectures
    config.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **json.loads(config.read_text())}))
    built = directory / "smollm2_onnx"
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", saved, "-m", "smollm2",
                           "-o", str(built), "-p", "fp32", "-e", "cpu", "-c", str(directory / "builder_cache")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"onnxruntime-genai's builder failed: {done.stderr[-1000:]}")
    return saved, str(built)


PORT_ALONE = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
import scratch_llama
model = getattr(scratch_llama, sys.argv[2])(sys.argv[3])
ids = torch.tensor([[int(token) for token in sys.stdin.read().split(",")]])
with torch.no_grad():
    logits, cache = model(ids)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def random_ids(tokens: int) -> list[int]:
    """The check's input at this length: token ids drawn from SmolLM2's vocabulary, the same at every run."""
    draw = random.Random(tokens)
    return [draw.randrange(1, 49152) for _ in range(tokens)]


def port_alone(ids: list[int], directory: str, factory: str, returned_block_bytes: int | None) -> tuple[float, float]:
    """(peak RSS GiB, wall s) of the port's own forward over the same ids, in a fresh process without a check:
    its weights, what its forward makes and returns (logits, cache), the interpreter and torch. What a check of
    the port cannot go below. `returned_block_bytes`: glibc's mmap threshold fixed there, as a check of an input
    that spills fixes it (core/allocator.py); None: the C library's own (a threshold that rises to 32 MiB)."""
    import os

    examples = Path(__file__).resolve().parent.parent / "examples"
    environment = dict(os.environ)
    if returned_block_bytes is not None:
        environment["MALLOC_MMAP_THRESHOLD_"] = str(returned_block_bytes)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PORT_ALONE, str(examples), factory, directory],
                          input=",".join(map(str, ids)), capture_output=True, text=True, check=True, env=environment)
    return int(done.stdout.split()[-1]) / 2**20, time.perf_counter() - started


def run_sampled(command: list[str]):
    """Run `command`, its resident memory read every 0.2 s (/proc) and filed under the progress line it last
    printed: (the finished process, [(stage, (peak GiB, its anonymous GiB, its file-backed GiB))]). File-backed
    pages (mapped traces, parked weights, libraries) count in RSS, as in the peak RSS printed, but the kernel
    can drop the clean ones under pressure."""
    import threading

    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    stage, peaks = ["start"], {}

    def sample() -> None:
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                break
            kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                   if line.startswith(("VmRSS:", "RssAnon:", "RssFile:"))}
            if "VmRSS" not in kib:
                break
            resident = (kib["VmRSS"] / 2**20, kib.get("RssAnon", 0) / 2**20, kib.get("RssFile", 0) / 2**20)
            peaks[stage[0]] = max(peaks.get(stage[0], resident), resident)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.strip():
            stage[0] = line.strip()[:90]
    process.wait()
    thread.join()
    return subprocess.CompletedProcess(command, process.returncode, "", "".join(lines)), list(peaks.items())


def run_once(tokens: int, model: str | None, candidate: str | None, decode_steps: int = 0,
             checkpoints: str | None = None, sampled: bool = False) -> dict:
    ids = random_ids(tokens)
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.json"
        pair = [model, candidate] if model and candidate else []
        command = [sys.executable, "-m", "parity", "check", *pair, "--tokens", ",".join(map(str, ids)),
                   "--decode-steps", str(decode_steps), "--json", str(report),
                   *(["--checkpoints", checkpoints] if checkpoints else [])]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done, stages = run_sampled(command) if sampled else (
            subprocess.run(command, capture_output=True, text=True, check=False), None)
        wall_s = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        failed, compared, first, cause, decode = None, None, None, None, None
        if report.exists():
            document = json.loads(report.read_text())
            failed, compared = document["summary"]["failed"], document["summary"]["compared"]
            first = (document.get("first_divergence") or {}).get("checkpoint")
            cause = next((d["cause"] for d in document.get("diagnoses", []) if d.get("cause") != "precision_noise"),
                         None)
            decode = document.get("decode")
        elif done.returncode == 2:
            print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
    return {"tokens": tokens, "peak_rss_gib": after.ru_maxrss / 2**20, "wall_s": wall_s,
            "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "exit": done.returncode, "failed": failed, "compared": compared, "first": first, "cause": cause, "stages": stages,
            "decode": decode}


def decode_line(decode: dict) -> str:
    """The token-by-token decoding check in one line: its steps, and where it first parts from the full pass."""
    steps = len(decode["rel_l2"])
    batches = ""
    if decode.get("batch_rel_l2"):
        batches = (f"; padded batches over the prompt's first {decode['batch_prompt_tokens']} tokens: worst rel_l2 "
                   + ", ".join(f"{side} {error:.2g}" for side, error in decode["batch_rel_l2"].items()))
    if decode["passed"]:
        return f"decode: {steps} steps within their bounds{batches}"
    return (f"decode: {steps} steps, the first outside its bound: step {decode['first_step']} (position "
            f"{decode['position']}), located to {decode['first_checkpoint'] or 'no checkpoint'}{batches}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="256,1024", help="comma-separated lengths")
    parser.add_argument("--model", help="the reference (default: the embedded SmolLM2 GGUF)")
    parser.add_argument("--candidate", help="the candidate (default: the same GGUF in llama.cpp)")
    parser.add_argument("--decode-steps", type=int, default=0, help="tokens decoded after the forward pass")
    parser.add_argument("--planted", choices=["rope_base"], help="check a copy of the GGUF with this bug planted")
    parser.add_argument("--port", nargs="?", const="row_blocked", metavar="FACTORY",
                        help="the candidate is the from-scratch PyTorch port (examples/scratch_llama.py), its "
                             "attention in blocks of 512 query rows (default factory: row_blocked)")
    parser.add_argument("--transformers", action="store_true",
                        help="both sides are the GGUF as transformers reads it, saved as a float32 model directory")
    parser.add_argument("--onnx", action="store_true",
                        help="the candidate is SmolLM2 built by onnxruntime-genai (float32), run in onnxruntime")
    parser.add_argument("--checkpoints", help="the checks' --checkpoints, e.g. '*,!*.attn_probs'")
    parser.add_argument("--stages", action="store_true", help="also print each stage's peak resident memory "
                                                               "(sampled every 0.2 s)")
    args = parser.parse_args()
    print(f"{'T':>6} {'peak RSS GiB':>13} {'wall s':>8} {'CPU s':>8} {'exit':>5} {'failed':>7} {'of':>5}  "
          "first failing / cause")
    with tempfile.TemporaryDirectory() as directory:
        model, candidate = args.model, args.candidate
        if args.planted:
            model, candidate = planted_rope_base(Path(directory))
        if args.transformers:
            model = candidate = smollm2_directory(Path(directory))
        if args.onnx:
            model, candidate = smollm2_onnx(Path(directory))
        if args.port:
            examples = Path(__file__).resolve().parent.parent / "examples"
            model, candidate = smollm2_directory(Path(directory)), f"{examples / 'scratch_llama.py'}:{args.port}"
        for tokens in (int(value) for value in args.tokens.split(",")):
            row = run_once(tokens, model, candidate, args.decode_steps, args.checkpoints, args.stages)
            print(f"{row['tokens']:>6} {row['peak_rss_gib']:>13.2f} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} "
                  f"{row['exit']:>5} {row['failed'] if row['failed'] is not None else '-':>7} "
                  f"{row['compared'] if row['compared'] is not None else '-':>5}  "
                  f"{row['first'] or '-'} / {row['cause'] or '-'}", flush=True)
            if row["decode"] is not None:
                print(f"{'':>6} {decode_line(row['decode'])}", flush=True)
            if args.port:
                from parity.core.allocator import RETURNED_BLOCK_BYTES

                for threshold, how in ((None, "the C library's own allocator settings"),
                                       (RETURNED_BLOCK_BYTES, "blocks over 4 MiB handed back, as in a long check")):
                    alone_gib, alone_s = port_alone(random_ids(tokens), model, args.port, threshold)
                    print(f"{'':>6} {alone_gib:>13.2f} {alone_s:>8.1f}  the port's own forward over the same ids, "
                          f"without a check, {how} (the check's peak - this: "
                          f"{row['peak_rss_gib'] - alone_gib:+.2f} GiB)", flush=True)
            for stage, (peak_gib, anonymous_gib, file_gib) in row["stages"] or ():
                print(f"{'':>6} {peak_gib:>13.2f}  (anonymous {anonymous_gib:.2f}, file-backed {file_gib:.2f})  "
                      f"{stage}", flush=True)


if __name__ == "__main__":
    main()
