"""`parity bench`: prefill and decode speed and peak memory, candidate against reference.

Each side runs in a process of its own (`python -m parity.commands.bench SIDE-JSON`), so
that its peak resident memory is its own and neither warms the other's caches.
In it: load the model, note the resident memory, then per repeat prefill a
prompt of fixed token ids in one batch (fresh cache) and decode fixed tokens one
at a time through the cache. Warm-up repeats are run and dropped; the medians
of the rest are reported. Both sides get the same threads and the same tokens.

A side is any candidate that can be timed (capture/candidate.py, capability "speed"):
a model directory or .gguf (transformers, at --dtype), llamacpp:FILE.gguf, or
FILE.py:FACTORY (a torch.nn.Module; decoding timed where its forward takes a cache).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from parity.commands import options as cli_options
from parity.core.errors import CaptureError, OptionError
from parity.core.results import BenchReport


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    decode_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    dtype: str = "float32"
    device: str = "cpu"


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    parser.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                        help="llamacpp:FILE.gguf, FILE.py:FACTORY, or a model directory or .gguf")
    parser.add_argument("--prompt-tokens", type=cli_options.positive_int, default=128,
                        help="prefill length (default 128)")
    parser.add_argument("--decode-tokens", type=cli_options.count, default=32,
                        help="tokens decoded one at a time (default 32)")
    parser.add_argument("--repeats", type=cli_options.positive_int, default=5,
                        help="timed repeats (default 5; the median is reported)")
    parser.add_argument("--warmup", type=cli_options.count, default=1, help="untimed repeats first (default 1)")
    parser.add_argument("--threads", type=cli_options.positive_int, help="threads for both sides (default: every core)")
    parser.add_argument("--dtype", choices=cli_options.DTYPES, help="the transformers side's precision (default float32)")
    parser.add_argument("--device", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--json", metavar="OUT", help="also write the JSON here ('-' for standard output only)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")


def run(args) -> int:
    """Time prefill and decode (tokens/s) and peak memory of a candidate against the reference.

    MODEL is the reference (a model directory or .gguf, in transformers at
    --dtype). CANDIDATE is llamacpp:FILE.gguf, FILE.py:FACTORY (a torch module;
    decoding is timed where its forward takes a cache, docs/porting.md; the
    factory gets MODEL's path), or another model directory. Each side runs in its
    own process with the same threads and the same token ids; medians after
    warm-up. With no arguments: SmolLM2 in transformers against the same GGUF in
    llama.cpp.
    """
    from parity.commands.defaults import default_pair
    from parity.commands.output import EXIT_PASS, progress
    from parity.report import registry

    default_pair(args, prompt=False, what="time against MODEL")
    settings = BenchOptions(prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, repeats=args.repeats,
                            warmup=args.warmup, dtype=args.dtype or "float32",
                            device=cli_options.torch_device(args.device),
                            **({"threads": args.threads} if args.threads else {}))
    with progress() as steps:
        result = run_bench(args.model, args.candidate, settings, steps)
    if args.json == "-":
        registry.write(result, "json", "-")
        return EXIT_PASS
    if args.json:
        registry.write(result, "json", args.json, overwrite=args.force)
    registry.show(result)
    return EXIT_PASS


def run_bench(model: str, candidate: str, options: BenchOptions = BenchOptions(), progress=None) -> BenchReport:
    """Both sides, one after the other, each in its own process."""
    if not os.path.exists(model):
        raise OptionError(f"{model}: no such model directory or .gguf file")
    _check_candidate(candidate)
    results = {}
    for side, spec in (("reference", model), ("candidate", candidate)):
        if progress is not None:
            progress.step(f"bench: {side} {spec}")
        results[side] = _run_side(spec, model, options)
    return BenchReport(reference=results["reference"], candidate=results["candidate"],
                       options={**options.__dict__, "tokens": "fixed ids, the same on both sides"})


def _check_candidate(spec: str) -> None:
    """A missing file or a side that cannot be timed is found before either side starts, not after the first
    has run."""
    from parity.capture.candidate import parse_candidate

    parsed = parse_candidate(spec).check()
    if not parsed.offers("speed"):
        raise OptionError(f"{spec} is {parsed.written}, which cannot be timed; give a model directory or .gguf, "
                          "llamacpp:FILE.gguf or FILE.py:FACTORY")


SIDE_TIMEOUT_S = float(os.environ.get("PARITY_BENCH_TIMEOUT_S", "3600"))   # one side, loading and every repeat


def _run_side(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    """One side in its own process. Its standard output carries one line, the result; what the side's code
    prints goes to standard error there, and a side that exits, is killed or runs past its time is one line."""
    from parity.core.isolation import describe_status
    from parity.core.printable import printable

    request = json.dumps({"spec": spec, "model": model, "options": options.__dict__})
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "TQDM_DISABLE": "1"}
    try:
        process = subprocess.run([sys.executable, "-m", "parity.commands.bench", request], capture_output=True,
                                 text=True, errors="replace", env=environment, timeout=SIDE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CaptureError(f"benchmarking {spec} did not finish within {SIDE_TIMEOUT_S:.0f} s (stopped); check it for "
                           "an endless loop, or allow more time with PARITY_BENCH_TIMEOUT_S") from None
    said = [line for line in process.stderr.strip().splitlines() if line.strip()]
    if process.returncode == 2 and said and said[-1].startswith(_ERROR):
        raise OptionError(said[-1].removeprefix(_ERROR))
    try:
        result = json.loads(process.stdout) if process.returncode == 0 else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        last = printable(said[-1])[:200] if said else "nothing on standard error"
        raise CaptureError(f"benchmarking {spec} failed: its process ended ({describe_status(process.returncode)}) "
                           f"without a result; it said last: {last}; a factory or model must return, not exit")
    return result


_ERROR = "parity: error: "


# --- in the side's own process ------------------------------------------------------


def measure_side(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    """Load `spec`, then time prefill and decode; peak memory of this process. The side's own code
    (a factory, a forward) raising, calling sys.exit or os._exit is one line naming it."""
    from parity.capture.torch.factory import describe_error
    from parity.core.isolation import guarded, is_user_exit

    try:
        with guarded():
            return _measure(spec, model, options)
    except BaseException as error:
        if not is_user_exit(error):
            raise
        raise CaptureError(f"{spec} failed while benchmarked: {describe_error(error)}; check that its forward runs "
                           "on token ids with use_cache") from None


def _measure(spec: str, model: str, options: BenchOptions) -> dict[str, Any]:
    from parity.capture.candidate import CandidateContext, open_candidate
    from parity.capture.hf.model import quiet_transformers

    quiet_transformers()
    baseline_mib = _current_rss_mib()
    with open_candidate(spec, CandidateContext(model_path=model, dtype=options.dtype), needs=("speed",)) as side:
        runner = side.speed_runner(options)
        loaded_mib = _current_rss_mib()
        _check_positions(spec, runner, options)
        vocab = runner.vocab_size
        prompt = [(7 + 31 * i) % vocab for i in range(options.prompt_tokens)]
        continuation = [(11 + 17 * i) % vocab for i in range(options.decode_tokens)]
        prefill_s, decode_s = [], []
        for repeat in range(options.warmup + options.repeats):
            prefill, decode = runner.time(prompt, continuation)
            if repeat >= options.warmup:
                prefill_s.append(prefill)
                decode_s.append(decode)
        backend = side.backend
    prefill_median = statistics.median(prefill_s)
    decode_median = statistics.median(decode_s) if all(t is not None for t in decode_s) else None
    return {"spec": spec, "kind": backend, "description": runner.description,
            "prefill_s": prefill_s, "decode_s": decode_s,
            "prefill_tokens_per_s": options.prompt_tokens / prefill_median,
            "decode_tokens_per_s": options.decode_tokens / decode_median if decode_median else None,
            "decode_note": runner.decode_note,
            "rss_before_load_mib": baseline_mib, "rss_after_load_mib": loaded_mib,
            "peak_rss_mib": max(_peak_rss_mib(), loaded_mib, _current_rss_mib()), **runner.device_memory()}


def _check_positions(spec: str, runner, options: BenchOptions) -> None:
    """Refuse more positions than the model takes (its config's, or llama.cpp's trained context)."""
    limit = getattr(runner, "context", None) or _positions(getattr(getattr(runner, "model", None), "config", None))
    positions = options.prompt_tokens + options.decode_tokens
    if limit is not None and positions > limit[1]:
        raise OptionError(f"--prompt-tokens {options.prompt_tokens} + --decode-tokens {options.decode_tokens} is "
                          f"{positions} positions, more than {spec} takes ({limit[0]} = {limit[1]}); "
                          "give fewer --prompt-tokens or --decode-tokens")


def _positions(config) -> tuple[str, int] | None:
    """(field, value) of the most positions a model takes, when its config says."""
    for name in ("n_positions", "max_position_embeddings"):
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if type(value) is int and value > 0:
            return name, value
    return None


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    """The kernel's high-water mark (Linux: KiB). It is kept from per-CPU counters that lag the resident size by
    a few pages, so the bench reports the larger of it and any resident size it read (a peak 0.02 MiB under
    the size after load was seen)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(argv: list[str]) -> int:
    from parity.core.errors import ParityError
    from parity.core.printable import printable

    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                 # what the side's code prints goes to standard error
    sys.stdout = sys.stderr
    request = json.loads(argv[0])
    try:
        result = measure_side(request["spec"], request["model"], BenchOptions(**request["options"]))
    except ParityError as error:
        print(f"{_ERROR}{printable(error)}", file=sys.stderr)
        return 2
    result_out.write(json.dumps(result))
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
