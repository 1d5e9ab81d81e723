"""parity check: capture the reference, obtain the candidate, calibrate, compare, diagnose.

A candidate is one of:
  - a trace file;                    its metadata tells its precision
  - `llamacpp:FILE.gguf`;             llama.cpp run layer by layer
  - `FILE.py:FACTORY` / `module:FACTORY`; a torch.nn.Module, whose parameters tell its precision
  - `http(s)://HOST:PORT`;            an OpenAI-compatible server, compared token by token

When the candidate's precision is known, the check calibrates by itself: the
reference runs at high precision (float64) and once more at the candidate's
precision (for llama.cpp: a float32 copy with its activation rounding, KV cache
type and GELU table emulated), and each checkpoint is held to the noise that
precision produces.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from parity.core.calibrate import check_same_tokens, noise_floors
from parity.core.compare import CompareConfig, compare
from parity.core.errors import OptionError
from parity.core.results import Comparison, Tolerance
from parity.core.sequence import SequenceComparison
from parity.core.trace import Trace, load_trace, save_trace

LLAMACPP_PREFIX = "llamacpp:"
SERVER_PREFIXES = ("http://", "https://")


@dataclass(frozen=True)
class CheckOptions:
    model: str                          # reference: model directory or .gguf file
    candidate: str                      # see the module docstring
    prompt: str | None = None
    tokens: list[int] | None = None
    dtype: str | None = None            # reference precision; None: float64 to calibrate, else float32
    calibrate: bool = True
    checkpoints: str | None = None
    tolerance: Tolerance | None = None  # the user's; disables calibration
    taps: str | None = None
    save_traces: Path | None = None
    overwrite: bool = False
    replay: bool = False                # torch candidates: also run each block and op on the reference's inputs
    decode_steps: int = 4               # candidates that decode: token-by-token decoding and greedy, this many tokens
    weights: bool = False               # also capture each tapped module's parameters (weight_mismatch)
    raw: bool = True                    # also capture raw.<module> outputs, where the candidate can have them too
    max_tokens: int = 16                # server candidates
    timeout_s: float = 60.0
    server_model: str | None = None
    kv_type: str = "f16"                # llama.cpp candidates: the KV cache type

    def __repr__(self) -> str:
        return f"<CheckOptions {self.model} vs {self.candidate}>"


class _Silent:
    def step(self, message: str) -> None:
        pass


def run_check(options: CheckOptions, progress=None) -> Comparison | SequenceComparison:
    progress = progress or _Silent()
    if options.candidate.startswith(SERVER_PREFIXES):
        return _check_server(options, progress)
    if (options.prompt is None) == (options.tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")
    from parity.capture.hf import load_model, quiet_transformers

    quiet_transformers()
    candidate_source = _candidate_source(options, progress)
    calibrating = options.calibrate and options.tolerance is None and candidate_source.precision is not None
    reference_dtype = options.dtype or ("float64" if calibrating else "float32")
    progress.step(f"loading {options.model} ({reference_dtype})")
    reference_model = load_model(options.model, dtype=reference_dtype)
    tokens = options.tokens if options.tokens is not None else reference_model.tokenize(options.prompt)
    progress.step(f"capturing the reference over {len(tokens)} tokens")
    reference = reference_model.capture(tokens, checkpoints=options.checkpoints, prompt=options.prompt,
                                        weights=options.weights, raw=options.raw and candidate_source.may_have_raw)
    candidate = candidate_source.trace(reference, options, progress)
    if candidate_source.is_llamacpp and not _same_file(options.model, candidate_source.gguf):
        candidate = _with_weight_rounding(candidate, reference_model, candidate_source.gguf, progress)
    config = CompareConfig(tolerance=options.tolerance, checkpoints=options.checkpoints)
    if calibrating and candidate_source.precision != reference_dtype:
        config = _calibrated(config, reference, reference_model, candidate_source, options, progress)
    if options.save_traces:
        progress.step(f"saving both traces to {options.save_traces}")
        reference, candidate = (
            dataclasses.replace(trace, source=str(save_trace(trace, Path(options.save_traces) / f"{role}.safetensors",
                                                             overwrite=options.overwrite)))
            for role, trace in (("reference", reference), ("candidate", candidate))
        )
    progress.step("comparing")
    comparison = compare_and_diagnose(reference, candidate, config)
    if options.replay:
        comparison = _with_replay(comparison, reference, candidate_source, options, progress)
    if options.decode_steps > 0 and candidate_source.decodes:
        comparison = _with_decoding(comparison, reference, reference_model, candidate_source, options, progress)
    return comparison


def _with_decoding(comparison: Comparison, reference: Trace, reference_model, source, options, progress) -> Comparison:
    """The comparison with a short greedy run and token-by-token decoding checked against the full pass."""
    from parity.capture import decoding
    from parity.core.calibrate import FLOOR, MULTIPLE
    from parity.core.decoding import compare_decode
    from parity.core.generation import GenerationComparison, first_divergence, greedy, teacher_forced
    from parity.core.metrics import rel_l2
    from parity.core.tolerances import DTYPE_FACTOR, KIND_FACTOR

    prompt = list(reference.tokens)
    progress.step(f"greedy decoding {options.decode_steps} tokens on both sides")
    continuation, reference_rows = greedy(reference_model.logits, prompt, options.decode_steps)
    sequence = prompt + continuation
    with source.logits_function() as candidate_logits:
        candidate_tokens, _ = greedy(candidate_logits, prompt, options.decode_steps)
        full = candidate_logits(sequence)
        progress.step("decoding token by token through the candidate's cache")
        if source.is_llamacpp:
            rows, steps = source.runner.incremental_logits(prompt, continuation), []
        else:
            rows, steps = decoding.incremental(source.model, prompt, continuation, taps=source.taps(options))
    reference_logits = reference_model.logits(sequence)
    generation = GenerationComparison(tuple(prompt), tuple(continuation), tuple(candidate_tokens),
                                      first_divergence(continuation, candidate_tokens, reference_rows),
                                      teacher_forced(reference_logits, full, len(prompt)), None,
                                      reference_model.vocab_pieces())
    positions = range(len(prompt) - 1, len(sequence))
    if source.is_llamacpp:
        from parity.capture.llamacpp_numerics import llamacpp_numerics

        lowp = _llamacpp_lowp(reference_model, source)
        with llamacpp_numerics(lowp.model, source.gguf, kv_type=options.kv_type):
            emulated = lowp.logits(sequence)
        bounds = [MULTIPLE * rel_l2(reference_logits[p], emulated[p]) + FLOOR["float32"] for p in positions]
        basis = f"{MULTIPLE:g}x the noise of llama.cpp's numerics at each position"
    else:
        dtype = source.precision if source.precision in DTYPE_FACTOR else "float32"
        bound = 2 * DTYPE_FACTOR[dtype] * KIND_FACTOR["logits"]
        bounds, basis = [bound] * len(positions), f"{dtype} default for logits"
    decode = compare_decode([full[p] for p in positions], rows, bounds, prompt_length=len(prompt), basis=basis)
    if not source.is_llamacpp:
        decode = _with_prefill_variants(decode, reference_model, source.model, prompt, full, bounds[0])
    if decode.first_step is not None and steps:
        from parity.capture.torch_module import trace_module

        from parity.diagnose.context import model_config
        from parity.diagnose.decoding import diagnose_decode

        full_trace = trace_module(source.model, sequence, taps=source.taps(options))
        step = steps[decode.first_step]
        where = decoding.first_checkpoint(full_trace, step, decode.position, decode.bounds[decode.first_step])
        decode = dataclasses.replace(decode, first_checkpoint=where)
        causes = diagnose_decode(full_trace, step, decode.position, where, model_config(reference))
        comparison = dataclasses.replace(comparison, diagnoses=tuple(comparison.diagnoses) + tuple(causes))
    return dataclasses.replace(comparison, decode=decode, generation=generation)


def _with_replay(comparison: Comparison, reference: Trace, source, options: CheckOptions, progress) -> Comparison:
    """The comparison with each block's and each op's own error, measured on the reference's inputs."""
    from parity.capture.replay import replay_module
    from parity.core.names import parse

    if source.model is None:
        raise OptionError("--replay needs a PyTorch candidate (FILE.py:FACTORY): it reruns the candidate's modules")
    progress.step("replaying each block and op on the reference's inputs")
    replay = replay_module(source.model, reference, taps=source.taps(options), checkpoints=options.checkpoints)
    config = CompareConfig(tolerance=Tolerance(0.0, 0.0, "replay"), checkpoints=options.checkpoints)
    ops = compare(reference, replay.ops, config=config)
    blocks = compare(reference, replay.blocks, config=config)
    return dataclasses.replace(
        comparison,
        local_rel_l2={r.name: r.metrics.rel_l2 for r in ops.checkpoints if r.metrics is not None},
        block_local_rel_l2={parse(r.name).layer: r.metrics.rel_l2 for r in blocks.checkpoints
                            if r.metrics is not None and parse(r.name) and parse(r.name).kind == "out"},
    )


def compare_and_diagnose(reference: Trace, candidate: Trace, config: CompareConfig) -> Comparison:
    from parity.diagnose import diagnose

    return diagnose(compare(reference, candidate, config=config), reference, candidate)


def _with_prefill_variants(decode, reference_model, model, prompt: list[int], full, bound: float):
    """Chunked prefill, padded batches and the KV cache itself, for a PyTorch candidate."""
    from parity.capture import decoding
    from parity.core.decoding import compare_caches
    from parity.core.metrics import rel_l2

    cache = compare_caches(decoding.prefill_cache(reference_model.model, prompt), decoding.prefill_cache(model, prompt),
                           bound)
    chunked = rel_l2(full[len(prompt) - 1], decoding.chunked_prefill_logits(model, prompt)) if len(prompt) > 1 else None
    batch = []
    for side in ("left", "right"):
        rows = decoding.padded_batch_logits(model, prompt, prompt[: max(1, len(prompt) // 2)], prompt[0], side)
        if rows is not None:
            batch.append((side, max(rel_l2(full[p], rows[p]) for p in range(len(prompt)))))
    return dataclasses.replace(decode, cache=cache, chunked_rel_l2=chunked, batch_rel_l2=tuple(batch))


def _calibrated(config, reference, reference_model, source, options, progress) -> CompareConfig:
    """The comparison config with noise floors from a run of the reference at the candidate's precision."""
    from parity.capture.hf import load_model

    if source.is_llamacpp:
        from parity.capture.llamacpp_numerics import llamacpp_numerics

        kv_type = source.kv_type or options.kv_type
        progress.step(f"calibrating: the reference in float32 with llama.cpp's numerics (KV cache {kv_type})")
        model = _llamacpp_lowp(reference_model, source)
        with llamacpp_numerics(model.model, source.gguf, kv_type=kv_type):
            lowp = model.capture(reference.tokens, checkpoints=options.checkpoints, raw=False)
        return CompareConfig(tolerance=config.tolerance, checkpoints=config.checkpoints,
                             noise=noise_floors(reference, lowp), noise_dtype="float32",
                             noise_label=f"llama.cpp's numerics (float32, activation rounding, {kv_type} KV cache)")
    progress.step(f"calibrating: the reference in {source.precision}")
    lowp_model = load_model(options.model, dtype=source.precision)
    lowp = lowp_model.capture(reference.tokens, checkpoints=options.checkpoints,
                              raw=options.raw and source.may_have_raw)
    check_same_tokens(reference, lowp)
    return CompareConfig(tolerance=config.tolerance, checkpoints=config.checkpoints,
                         noise=noise_floors(reference, lowp), noise_dtype=source.precision)


def _same_file(model: str, gguf: Path) -> bool:
    return Path(model).resolve() == Path(gguf).resolve()


def _with_weight_rounding(candidate: Trace, reference_model, gguf: Path, progress) -> Trace:
    """The candidate's trace with each GGUF weight's measured rounding against the reference's weights."""
    from parity.capture.gguf_weights import measure_weight_rounding

    progress.step(f"measuring how {gguf.name}'s weights are rounded from the reference's")
    measured = measure_weight_rounding(reference_model.model, gguf)
    metadata = {**candidate.metadata, "weight_rounding": [tensor.as_dict() for tensor in measured] or None}
    return dataclasses.replace(candidate, metadata=metadata)


def _llamacpp_lowp(reference_model, source):
    """A float32 copy of the reference model, made once per check: llama.cpp computes in float32.
    (nn.Module's own cast: transformers refuses `.float()` on a model it dequantized from a GGUF.)"""
    import copy

    import torch

    if source.lowp_model is None:
        source.lowp_model = reference_model if reference_model.dtype == "float32" else dataclasses.replace(
            reference_model, model=torch.nn.Module.float(copy.deepcopy(reference_model.model)), dtype="float32")
    return source.lowp_model


# --- candidates -------------------------------------------------------------------


@dataclass
class _CandidateSource:
    spec: str
    precision: str | None = None     # the candidate's dtype, when known
    gguf: Path | None = None         # llama.cpp candidates
    model: object | None = None      # torch candidates
    loaded: Trace | None = None      # trace candidates
    runner: object | None = None     # llama.cpp candidates: the runner open inside logits_function()
    kv_type: str | None = None       # llama.cpp candidates: the KV cache type the graph read K in
    lowp_model: object | None = None  # llama.cpp candidates: the float32 reference that emulates it

    @property
    def is_llamacpp(self) -> bool:
        return self.gguf is not None

    @property
    def may_have_raw(self) -> bool:
        """Can this candidate hold raw.<module> outputs (a trace that has some, a transformers model)?"""
        from parity.core.names import is_raw

        if self.loaded is not None:
            return any(is_raw(name) for name in self.loaded.tensors)
        return self.model is not None and _is_transformers(self.model)

    @property
    def decodes(self) -> bool:
        """Can this candidate decode token by token through a cache?"""
        if self.is_llamacpp:
            return True
        from parity.capture.decoding import can_decode

        return self.model is not None and can_decode(self.model)

    def logits_function(self):
        """A context manager giving logits(ids) -> (T, V) for the candidate."""
        from contextlib import contextmanager

        @contextmanager
        def opened():
            if self.is_llamacpp:
                from parity.capture.llamacpp import LlamaCppRunner

                with LlamaCppRunner(self.gguf, kv_type=self.kv_type or "f16") as runner:
                    self.runner = runner
                    yield runner.logits
            else:
                from parity.capture.decoding import full_logits

                yield lambda ids: full_logits(self.model, ids)

        return opened()

    def trace(self, reference: Trace, options: CheckOptions, progress) -> Trace:
        if self.loaded is not None:
            return self.loaded
        if self.gguf is not None:
            from parity.capture.llamacpp import LlamaCppRunner

            progress.step(f"running {self.gguf.name} in llama.cpp over {len(reference.tokens)} tokens")
            with LlamaCppRunner(self.gguf, kv_type=options.kv_type) as runner:
                trace = runner.capture(reference.tokens, checkpoints=options.checkpoints, prompt=options.prompt)
            self.kv_type = trace.metadata.get("kv_type") or options.kv_type
            return trace
        from parity.capture.torch_module import trace_module

        progress.step(f"capturing the candidate over {len(reference.tokens)} tokens")
        return trace_module(self.model, reference.tokens, taps=self.taps(options), checkpoints=options.checkpoints,
                            weights=options.weights, raw=options.raw and self.may_have_raw and not options.taps)

    def taps(self, options: CheckOptions):
        return options.taps or getattr(self.model, "parity_taps", None) or _infer_taps(self.model, self.spec)


def _candidate_source(options: CheckOptions, progress) -> _CandidateSource:
    spec = options.candidate
    if spec.startswith(LLAMACPP_PREFIX):
        path = Path(spec.removeprefix(LLAMACPP_PREFIX))
        if not path.is_file():
            raise OptionError(f"{path}: no such .gguf file for the llama.cpp candidate")
        return _CandidateSource(spec, precision="llama.cpp", gguf=path)
    if Path(spec).exists() and not spec.endswith(".py"):
        progress.step(f"reading {spec}")
        trace = load_trace(spec)
        return _CandidateSource(spec, precision=trace.metadata.get("dtype"), loaded=trace)
    if ":" not in spec:
        raise OptionError(f"candidate '{spec}' is neither an existing trace nor MODULE:FACTORY (e.g. my_port.py:build)")
    progress.step(f"building the candidate from {spec}")
    model = _call_factory(spec, options.model)
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()), None)
    return _CandidateSource(spec, precision=dtype, model=model)


def _call_factory(spec: str, model_path: str):
    module_name, _, factory_name = spec.rpartition(":")
    module = _import(module_name)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise OptionError(f"{module_name} has no function '{factory_name}'; name a factory that returns the model")
    takes_path = any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        for p in inspect.signature(factory).parameters.values()
    )
    try:
        model = factory(model_path) if takes_path else factory()
    except Exception as error:  # the user's code: say where it failed, in one line
        raise OptionError(f"{spec} failed: {_where(error)}") from error
    if not hasattr(model, "named_modules"):
        raise OptionError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import(name: str):
    """Import FILE.py as a script would run (its directory and the working directory importable), or a module."""
    for directory in ([str(Path(name).resolve().parent)] if name.endswith(".py") else []) + [str(Path.cwd())]:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        if not name.endswith(".py"):
            return importlib.import_module(name)
        path = Path(name)
        if not path.exists():
            raise OptionError(f"{name}: no such file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    except OptionError:
        raise
    except Exception as error:
        raise OptionError(f"importing {name} failed: {_where(error)}") from error


def _where(error: BaseException) -> str:
    """'ExceptionType: message (at file:line)', the line being the innermost frame of the user's code."""
    import traceback

    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "/parity/" not in frame.filename]
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{at}"


def _is_transformers(model) -> bool:
    from parity.capture.hf_attention import is_hf_model

    return hasattr(model, "config") and is_hf_model(model)


def _infer_taps(model, spec: str):
    if _is_transformers(model):  # a transformers model (a modified one, another version): mapped from its structure
        from parity.capture.hf_structure import map_model

        return map_model(model, where=spec).taps
    names = {name for name, _ in model.named_modules()}
    if "model.layers.0" in names:
        return "hf"
    if "transformer.h.0" in names:
        return "nanogpt"
    raise OptionError(
        f"parity cannot tell where the checkpoints live in {spec}: set a `parity_taps` attribute on the "
        "model or pass --taps (see docs/capture.md)"
    )


# --- servers ----------------------------------------------------------------------


def _check_server(options: CheckOptions, progress) -> SequenceComparison:
    from parity.capture.hf import load_model, quiet_transformers
    from parity.capture.openai_server import OpenAIServer
    from parity.core.sequence import compare_sequences

    if options.prompt is None:
        raise OptionError("a server candidate needs --prompt TEXT (it tokenizes the text itself)")
    quiet_transformers()
    server = OpenAIServer(options.candidate, model=options.server_model, timeout_s=options.timeout_s)
    progress.step(f"asking {server.completions_url} for {options.max_tokens} greedy tokens with log-probabilities")
    candidate = server.complete(options.prompt, max_tokens=options.max_tokens)
    dtype = options.dtype or "float32"
    progress.step(f"loading {options.model} ({dtype})")
    reference = load_model(options.model, dtype=dtype)
    progress.step("scoring the candidate's text with the reference")
    return compare_sequences(reference.reference_tokens(candidate.text), candidate)
