"""parity check: capture the reference, obtain the candidate, calibrate, compare, diagnose.

A candidate is one of:
  - a trace file;                    its metadata tells its precision
  - `llamacpp:FILE.gguf`;             llama.cpp run layer by layer
  - `FILE.py:FACTORY` / `module:FACTORY`; a torch.nn.Module, whose parameters tell its precision
  - `http(s)://HOST:PORT`;            an OpenAI-compatible server, compared token by token
  - a model directory or .gguf;      transformers, at --dtype (default float32)
(opened by parity.capture.candidates).

When the candidate's precision is known, the check calibrates by itself: the
reference runs at high precision (float64) and once more at the candidate's
precision (for llama.cpp: a float32 copy with its activation rounding, KV cache
type and GELU table emulated), and each checkpoint is held to the noise that
precision produces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from parity.capture.candidates import CandidateSource, kind_of, open_candidate
from parity.capture.placement import Placement
from parity.core.calibrate import check_same_tokens, noise_floors
from parity.core.compare import CompareConfig, compare, require_compared
from parity.core.errors import OptionError
from parity.core.results import Comparison, Tolerance
from parity.core.sequence import SequenceComparison
from parity.core.trace import Trace, load_trace, save_trace

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
    placement: Placement | None = None  # the reference's devices and offload (accelerate)
    kv_type: str = "f16"                # llama.cpp candidates: the KV cache type

    def __repr__(self) -> str:
        return f"<CheckOptions {self.model} vs {self.candidate}>"


class _Silent:
    def step(self, message: str) -> None:
        pass


def run_check(options: CheckOptions, progress=None) -> Comparison | SequenceComparison:
    progress = progress or _Silent()
    if kind_of(options.candidate) == "server":
        return _check_server(options, progress)
    if (options.prompt is None) == (options.tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")
    from parity.capture.hf import quiet_transformers

    quiet_transformers()
    with open_candidate(options.candidate, model_path=options.model, dtype=options.dtype or "float32",
                        progress=progress) as candidate_source:
        return _check(options, candidate_source, progress)


def _check(options: CheckOptions, candidate_source: CandidateSource, progress) -> Comparison:
    from parity.capture.hf import load_model

    calibrating = options.calibrate and options.tolerance is None and candidate_source.precision is not None
    reference_dtype = options.dtype or ("float64" if calibrating else "float32")
    candidate_source.kv_type = options.kv_type
    progress.step(f"loading {options.model} ({reference_dtype})")
    reference_model = load_model(options.model, dtype=reference_dtype, placement=options.placement)
    tokens = options.tokens if options.tokens is not None else reference_model.tokenize(options.prompt)
    progress.step(f"capturing the reference over {len(tokens)} tokens")
    reference = reference_model.capture(tokens, checkpoints=options.checkpoints, prompt=options.prompt,
                                        weights=options.weights, raw=options.raw and candidate_source.may_have_raw)
    candidate = candidate_source.trace(reference.tokens, checkpoints=options.checkpoints, taps=options.taps,
                                       weights=options.weights, prompt=options.prompt, progress=progress,
                                       raw=options.raw)
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
    from parity.diagnose import without_noise_on_failure

    return without_noise_on_failure(comparison)


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
    candidate_tokens, _ = greedy(source.logits, prompt, options.decode_steps)
    full = source.logits(sequence)
    progress.step("decoding token by token through the candidate's cache")
    if source.is_llamacpp:
        rows, steps = source.runner.incremental_logits(prompt, continuation), []
    else:
        rows, steps = decoding.incremental(source.model, prompt, continuation, taps=source.taps(options.taps))
    reference_logits = reference_model.logits(sequence)
    generation = GenerationComparison(tuple(prompt), tuple(continuation), tuple(candidate_tokens),
                                      first_divergence(continuation, candidate_tokens, reference_rows),
                                      teacher_forced(reference_logits, full, len(prompt)), None,
                                      reference_model.vocab_pieces())
    positions = range(len(prompt) - 1, len(sequence))
    if source.is_llamacpp:
        from parity.capture.llamacpp_numerics import llamacpp_numerics

        lowp = _llamacpp_lowp(reference_model, source)
        with llamacpp_numerics(lowp.model, source.gguf, kv_type=source.kv_type):
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

        full_trace = trace_module(source.model, sequence, taps=source.taps(options.taps))
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
    replay = replay_module(source.model, reference, taps=source.taps(options.taps), checkpoints=options.checkpoints)
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

    comparison = compare(reference, candidate, config=config)
    require_compared(comparison, reference, candidate, config)
    return diagnose(comparison, reference, candidate)


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

        kv_type = source.kv_type
        progress.step(f"calibrating: the reference in float32 with llama.cpp's numerics (KV cache {kv_type})")
        model = _llamacpp_lowp(reference_model, source)
        with llamacpp_numerics(model.model, source.gguf, kv_type=kv_type):
            lowp = model.capture(reference.tokens, checkpoints=options.checkpoints, raw=False)
        return CompareConfig(tolerance=config.tolerance, checkpoints=config.checkpoints,
                             noise=noise_floors(reference, lowp), noise_dtype="float32",
                             noise_label=f"llama.cpp's numerics (float32, activation rounding, {kv_type} KV cache)")
    progress.step(f"calibrating: the reference in {source.precision}")
    lowp_model = load_model(options.model, dtype=source.precision, placement=options.placement)
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


# --- servers ----------------------------------------------------------------------


def _check_server(options: CheckOptions, progress) -> SequenceComparison:
    from parity.capture.hf import load_model, quiet_transformers
    from parity.core.sequence import compare_sequences

    if options.prompt is None:
        raise OptionError("a server candidate needs --prompt TEXT (it tokenizes the text itself)")
    quiet_transformers()
    with open_candidate(options.candidate, accept=("server",), server_model=options.server_model,
                        timeout_s=options.timeout_s) as source:
        server = source.server
        progress.step(f"asking {server.completions_url} for {options.max_tokens} greedy tokens with log-probabilities")
        candidate = server.complete(options.prompt, max_tokens=options.max_tokens)
    dtype = options.dtype or "float32"
    progress.step(f"loading {options.model} ({dtype})")
    reference = load_model(options.model, dtype=dtype)
    progress.step("scoring the candidate's text with the reference")
    return compare_sequences(reference.reference_tokens(candidate.text), candidate)
