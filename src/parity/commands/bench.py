"""`parity bench`: prefill and decode speed and peak memory, candidate against reference.

Each side runs in a process of its own (`python -m parity.commands.bench SIDE-JSON`), so
that its peak resident memory is its own and neither warms the other's caches.
In it: load the model, note the resident memory, then per repeat prefill a
prompt of fixed token ids in one batch (fresh cache) and decode fixed tokens one
at a time through the cache. Warm-up repeats are run and dropped; the medians
of the rest are reported. Both sides get the same threads and the same tokens.

    side kinds   transformers  a model directory or .gguf (dequantized), at --dtype
                 llamacpp      llamacpp:FILE.gguf, through llama-cpp-python
                 factory       FILE.py:FACTORY, a torch.nn.Module taking use_cache and its cache (cache or past_key_values)
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from parity.capture.candidates import LLAMACPP_PREFIX
from parity.core.errors import CaptureError, OptionError


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    decode_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    dtype: str = "float32"
    device: str = "cpu"


@dataclass(frozen=True)
class BenchReport:
    reference: dict[str, Any]
    candidate: dict[str, Any]
    options: dict[str, Any]

    def __repr__(self) -> str:
        return f"<BenchReport prefill {self.ratio('prefill_tokens_per_s'):.2f}x decode {self.ratio('decode_tokens_per_s'):.2f}x>"

    def ratio(self, key: str) -> float | None:
        """candidate / reference for a throughput (above 1: the candidate is faster)."""
        reference, candidate = self.reference.get(key), self.candidate.get(key)
        return candidate / reference if reference and candidate else None

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options, "reference": self.reference, "candidate": self.candidate,
                "speedup": {"prefill": self.ratio("prefill_tokens_per_s"), "decode": self.ratio("decode_tokens_per_s")}}


def kind_of(spec: str) -> str:
    if spec.startswith(LLAMACPP_PREFIX):
        return "llamacpp"
    if ":" in spec and not os.path.exists(spec):
        return "factory"
    return "transformers"


def run_bench(model: str, candidate: str, options: BenchOptions = BenchOptions(), progress=None) -> BenchReport:
    """Both sides, one after the other, each in its own process."""
    for spec in (model, candidate):
        _check_exists(spec)
    results = {}
    for side, spec in (("reference", model), ("candidate", candidate)):
        if progress is not None:
            progress.step(f"bench: {side} {spec}")
        results[side] = _run_side(spec, model, options)
    return BenchReport(reference=results["reference"], candidate=results["candidate"],
                       options={**options.__dict__, "tokens": "fixed ids, the same on both sides"})


def _check_exists(spec: str) -> None:
    """A missing file is found before either side starts, not after the first has run."""
    kind = kind_of(spec)
    path = spec.removeprefix(LLAMACPP_PREFIX) if kind == "llamacpp" else spec.rpartition(":")[0] if kind == "factory" else spec
    if kind == "llamacpp" and not os.path.isfile(path):
        raise OptionError(f"{path}: no such .gguf file for the llama.cpp side")
    if kind == "factory" and path.endswith(".py") and not os.path.isfile(path):
        raise OptionError(f"{path}: no such file")
    if kind == "transformers" and not os.path.exists(path):
        raise OptionError(f"{path}: no such model directory or .gguf file")


def _run_side(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    request = json.dumps({"spec": spec, "model": model, "options": options.__dict__})
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "TQDM_DISABLE": "1"}
    process = subprocess.run([sys.executable, "-m", "parity.commands.bench", request], capture_output=True, text=True,
                             env=environment)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        last = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise CaptureError(f"benchmarking {spec} failed: {last}")
    return json.loads(lines[-1])


# --- in the side's own process ------------------------------------------------------


def measure_side(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    """Load `spec`, then time prefill and decode; peak memory of this process."""
    kind = kind_of(spec)
    baseline_mib = _current_rss_mib()
    runner = _LlamaCpp(spec, options) if kind == "llamacpp" else _Torch(spec, model, kind, options)
    loaded_mib = _current_rss_mib()
    vocab = runner.vocab_size
    prompt = [(7 + 31 * i) % vocab for i in range(options.prompt_tokens)]
    continuation = [(11 + 17 * i) % vocab for i in range(options.decode_tokens)]
    prefill_s, decode_s = [], []
    for repeat in range(options.warmup + options.repeats):
        prefill, decode = runner.time(prompt, continuation)
        if repeat >= options.warmup:
            prefill_s.append(prefill)
            decode_s.append(decode)
    prefill_median = statistics.median(prefill_s)
    decode_median = statistics.median(decode_s) if all(t is not None for t in decode_s) else None
    return {"spec": spec, "kind": kind, "description": runner.description,
            "prefill_s": prefill_s, "decode_s": decode_s,
            "prefill_tokens_per_s": options.prompt_tokens / prefill_median,
            "decode_tokens_per_s": options.decode_tokens / decode_median if decode_median else None,
            "decode_note": runner.decode_note,
            "rss_before_load_mib": baseline_mib, "rss_after_load_mib": loaded_mib,
            "peak_rss_mib": _peak_rss_mib(), **runner.device_memory()}


class _Torch:
    def __init__(self, spec: str, model: str, kind: str, options: BenchOptions) -> None:
        import torch

        torch.set_num_threads(options.threads)
        self.torch, self.device = torch, options.device
        if kind == "factory":
            from parity.capture.torch.factory import build_module

            self.model = build_module(spec, model).to(device=options.device).eval()
        else:
            from parity.capture.hf.model import load_model, quiet_transformers

            quiet_transformers()
            self.model = load_model(spec, dtype=options.dtype).model.to(options.device)
        from parity.capture.torch.incremental import decode_support

        self.decodes = kind != "factory" or decode_support(self.model, [0, 1]) is None
        self.decode_note = None if self.decodes else "not measured: the candidate's forward takes no cache"
        config = getattr(self.model, "config", None)
        self.vocab_size = getattr(config, "vocab_size", None) or (config or {}).get("vocab_size")
        if not self.vocab_size:
            raise OptionError(f"{spec}: the model has no config.vocab_size to draw token ids from")
        dtype = next(self.model.parameters()).dtype
        self.description = f"{'transformers' if kind != 'factory' else 'torch module'} {type(self.model).__name__}, " \
                           f"{str(dtype).removeprefix('torch.')}, {options.threads} threads, {options.device}"

    def time(self, prompt: list[int], continuation: list[int]) -> tuple[float, float | None]:
        from parity.capture.torch.incremental import call_with_cache

        torch = self.torch
        ids = torch.tensor([prompt], device=self.device)
        with torch.no_grad():
            start = _now(self.device)
            if not self.decodes:
                self.model(ids)
                return _now(self.device) - start, None
            _, cache = call_with_cache(self.model, ids, None)
            prefill = _now(self.device) - start
            start = _now(self.device)
            for token in continuation:
                _, cache = call_with_cache(self.model, torch.tensor([[token]], device=self.device), cache)
            return prefill, _now(self.device) - start

    def device_memory(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            return {"peak_device_mib": self.torch.cuda.max_memory_allocated() / 2 ** 20}
        return {}


class _LlamaCpp:
    decode_note = None

    def __init__(self, spec: str, options: BenchOptions) -> None:
        from parity.core.errors import require

        llama_cpp = require("llama_cpp", extra="llamacpp", package="llama-cpp-python", purpose="benchmarking llama.cpp")
        path = spec.removeprefix(LLAMACPP_PREFIX)
        if not os.path.isfile(path):
            raise OptionError(f"{path}: no such .gguf file for the llama.cpp side")
        context = options.prompt_tokens + options.decode_tokens + 8
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=context, n_batch=max(options.prompt_tokens, 32),
                                   n_ubatch=max(options.prompt_tokens, 32), n_threads=options.threads,
                                   n_threads_batch=options.threads, verbose=False, logits_all=False,
                                   n_gpu_layers=-1 if options.device.startswith("cuda") else 0)
        self.vocab_size = self.llm.n_vocab()
        self.description = f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {options.threads} threads"

    def time(self, prompt: list[int], continuation: list[int]) -> tuple[float, float]:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for token in continuation:
            self.llm.eval([token])
        return prefill, time.perf_counter() - start

    def device_memory(self) -> dict[str, Any]:
        return {}


def _now(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(argv: list[str]) -> int:
    from parity.core.errors import ParityError

    request = json.loads(argv[0])
    try:
        result = measure_side(request["spec"], request["model"], BenchOptions(**request["options"]))
    except ParityError as error:
        print(f"parity: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
