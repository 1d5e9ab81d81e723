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
from parity.capture.hf.placement import Placement
from parity.core.calibrate import check_same_tokens, noise_floors
from parity.core.compare import CompareConfig, compare, require_compared
from parity.core.errors import OptionError
from parity.core.results import NOT_ASKED, Comparison, NotChecked, Tolerance
from parity.core.sequence import SequenceComparison
from parity.core.trace import Trace, save_trace

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
    on_device: bool = False             # torch candidates on the reference's device: measure there (check_on_device)

    def __repr__(self) -> str:
        return f"<CheckOptions {self.model} vs {self.candidate}>"


class _Silent:
    def step(self, message: str) -> None:
        pass


def run_check(options: CheckOptions, progress=None) -> Comparison | SequenceComparison:
    progress = progress or _Silent()
    if options.on_device:
        from parity.commands.check.on_device import check_options

        check_options(options, kind_of(options.candidate))
    if kind_of(options.candidate) == "server":
        return _check_server(options, progress)
    if (options.prompt is None) == (options.tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")
    from parity.capture.hf.model import load_tokenizer, quiet_transformers

    quiet_transformers()
    if options.prompt is not None:
        load_tokenizer(options.model)  # up front: a missing or empty tokenizer is said before any work
    # --on-device: a model-directory candidate loads where the reference does (a factory places its own module)
    with open_candidate(options.candidate, model_path=options.model, dtype=options.dtype or "float32",
                        progress=progress, placement=options.placement if options.on_device else None) \
            as candidate_source:
        return _check(options, candidate_source, progress)


def _check(options: CheckOptions, candidate_source: CandidateSource, progress) -> Comparison:
    from parity.capture.hf.model import load_model

    calibrating = options.calibrate and options.tolerance is None and candidate_source.precision is not None
    reference_dtype = options.dtype or ("float64" if calibrating else "float32")
    candidate_source.kv_type = options.kv_type
    progress.step(f"loading {options.model} ({reference_dtype})")
    reference_model = load_model(options.model, dtype=reference_dtype, placement=options.placement)
    tokens = options.tokens if options.tokens is not None else reference_model.tokenize(options.prompt)
    reference_model.check_length(len(tokens))
    if options.decode_steps > 0 and (candidate_source.model is not None or candidate_source.is_llamacpp):
        reference_model.check_length(len(tokens) + options.decode_steps,
                                     what=f"the prompt ({len(tokens)} tokens) with --decode-steps {options.decode_steps}")
    if options.on_device:
        from parity.commands.check.on_device import forward_on_device

        measured = forward_on_device(options, reference_model, candidate_source, tokens, calibrating=calibrating,
                                     reference_dtype=reference_dtype, progress=progress)
        if measured is not None:
            comparison, reference_metadata = measured
            return _past_the_forward(comparison, Trace(tensors={}, metadata=reference_metadata), [], options,
                                     reference_model, candidate_source, calibrating, progress)
        progress.step("the on-device pass found a divergence: running again with full traces on the host, "
                      "to diagnose it")
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
    if options.on_device:
        comparison = dataclasses.replace(comparison, notes=tuple(comparison.notes) + (
            "the on-device pass found a divergence; these results come from a second run with full traces on "
            "the host, which the diagnosis reads",))
    return _past_the_forward(comparison, reference, candidate.names, options, reference_model, candidate_source,
                             calibrating, progress)


def _past_the_forward(comparison: Comparison, reference: Trace, candidate_names: list[str], options: CheckOptions,
                      reference_model, candidate_source, calibrating: bool, progress) -> Comparison:
    """The forward pass's comparison with decoding checked after it, and the checks that did not run.
    (`reference`: its tokens and metadata are read, not its tensors.)"""
    from parity.commands.check.beyond_forward import with_decoding

    comparison = with_decoding(comparison, reference, reference_model, candidate_source, steps=options.decode_steps,
                               taps=options.taps, progress=progress)
    from parity.diagnose import without_noise_on_failure

    return without_noise_on_failure(_with_not_checked(comparison, candidate_names, candidate_source, options,
                                                      calibrating))


def _with_not_checked(comparison: Comparison, candidate_names: list[str], source, options: CheckOptions,
                      calibrating: bool) -> Comparison:
    """The comparison listing the one-pass checks that did not run, and why."""
    skipped = []
    if options.calibrate and options.tolerance is None and not calibrating:
        skipped.append(NotChecked("calibration", "the candidate's precision is unknown (a trace without a dtype in "
                                                 "its metadata): the dtype tables' tolerances were used"))
    if not options.weights:
        skipped.append(NotChecked("weights", f"{NOT_ASKED}: --weights compares each tapped module's parameters"))
    elif not any(name.endswith(".weight") for name in candidate_names):
        skipped.append(NotChecked("weights", f"the candidate ({source.kind_description}) gave no parameters"))
    if not options.replay:
        skipped.append(NotChecked("replay", f"{NOT_ASKED}: --replay reruns each block and op on the reference's "
                                            "inputs"))
    return dataclasses.replace(comparison, not_checked=tuple(skipped) + tuple(comparison.not_checked))


def _with_replay(comparison: Comparison, reference: Trace, source, options: CheckOptions, progress) -> Comparison:
    """The comparison with each block's and each op's own error, measured on the reference's inputs."""
    from parity.capture.torch.replay import replay_module
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


def _calibrated(config, reference, reference_model, source, options, progress) -> CompareConfig:
    """The comparison config with noise floors from a run of the reference at the candidate's precision."""
    from parity.capture.hf.model import load_model

    if source.is_llamacpp:
        from parity.capture.llamacpp.numerics import llamacpp_numerics
        from parity.commands.check.beyond_forward import llamacpp_lowp

        kv_type = source.kv_type
        progress.step(f"calibrating: the reference in float32 with llama.cpp's numerics (KV cache {kv_type})")
        model = llamacpp_lowp(reference_model, source)
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
    from parity.capture.gguf.weights import measure_weight_rounding

    progress.step(f"measuring how {gguf.name}'s weights are rounded from the reference's")
    measured = measure_weight_rounding(reference_model.model, gguf)
    metadata = {**candidate.metadata, "weight_rounding": [tensor.as_dict() for tensor in measured] or None}
    return dataclasses.replace(candidate, metadata=metadata)


# --- servers ----------------------------------------------------------------------


def _check_server(options: CheckOptions, progress) -> SequenceComparison:
    from parity.capture.hf.model import load_model, quiet_transformers
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
