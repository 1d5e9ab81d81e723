"""parity check: capture the reference, obtain the candidate, calibrate, compare, diagnose.

The candidate is whatever CANDIDATE names (capture/candidate.py): a trace, llama.cpp,
a PyTorch module, a transformers model, or an OpenAI-compatible server. The check asks
it what it can give: a server gives text and log-probabilities, compared token by token
(server.py); the others give a forward pass's checkpoints, compared checkpoint by
checkpoint, then whatever decoding it supports (beyond_forward.py).

When the candidate's precision is known, the check calibrates by itself: the reference
runs at high precision (float64) and once more at the candidate's precision (for
llama.cpp: a float32 copy with its activation rounding, KV cache type and GELU table
emulated), and each checkpoint is held to the noise that precision produces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, open_candidate, parse_candidate
from parity.capture.hf.placement import Placement
from parity.core.compare import CompareConfig, compare
from parity.core.errors import OptionError
from parity.core.names import select
from parity.core.results import NOT_ASKED, Comparison, NotChecked, Tolerance
from parity.core.sequence import SequenceComparison
from parity.commands.check.op_weights import were_read, with_op_weights
from parity.commands.check.rerun import with_second_run
from parity.commands.check.precision_hint import with_precision_measured
from parity.commands.check.settings import with_settings_tried
from parity.commands.check.spill import SPILL_BYTES, reference_trace_bytes, spill_directory, spilled
from parity.core.allocator import return_freed_memory
from parity.core.trace import Trace, save_trace


@dataclass(frozen=True)
class CheckOptions:
    model: str                          # reference: model directory or .gguf file
    candidate: str                      # see capture/candidate.py
    prompt: str | None = None
    system: str | None = None           # chat endpoints: a system message sent before the prompt
    tokens: list[int] | None = None
    dtype: str | None = None            # reference precision; None: float64 to calibrate, else float32
    candidate_dtype: str | None = None  # model candidates' precision; None: dtype, else float32
    calibrate: bool = True
    checkpoints: str | None = None
    tolerance: Tolerance | None = None  # the user's; disables calibration
    taps: str | None = None
    save_traces: Path | None = None
    overwrite: bool = False
    replay: bool = False                # torch candidates: also run each block and op on the reference's inputs
    decode_steps: int = 4               # candidates that decode: token-by-token decoding and greedy, this many tokens
    weights: bool = False               # also capture each tapped module's parameters (weight_mismatch)
    quantized_reference: bool = False   # the reference computes with the candidate's quantized weights
    raw: bool = True                    # also capture raw.<module> outputs, where the candidate can have them too
    max_tokens: int = 16                # server candidates
    timeout_s: float = 60.0
    server_model: str | None = None
    server_options: tuple[tuple[str, Any], ...] = ()   # fields added to a server's completion request
    placement: Placement | None = None  # the reference's devices and offload (accelerate)
    kv_type: str = "f16"                # llama.cpp candidates: the KV cache type
    on_device: bool = False             # torch candidates on the reference's device: measure there (on_device.py)
    strict: frozenset[str] = frozenset()  # conventions held as failures, not adapted (core/conventions.py)
    start_position: int = 0             # the absolute position of the first token: far positions, short inputs
    stream_probabilities: bool | None = None  # attention probabilities measured as made (probabilities.py); None: large

    def __repr__(self) -> str:
        return f"<CheckOptions {self.model} vs {self.candidate}>"

    def request(self, reference_model=None, spill_to: str | None = None, stream=None) -> TraceRequest:
        return TraceRequest(checkpoints=self.checkpoints, taps=self.taps, weights=self.weights, raw=self.raw,
                            prompt=self.prompt, reference_model=reference_model, start_position=self.start_position,
                            spill_to=spill_to, stream=stream)


class _Silent:
    def step(self, message: str) -> None:
        pass


def run_check(options: CheckOptions, progress=None) -> Comparison | SequenceComparison:
    progress = progress or _Silent()
    spec = parse_candidate(options.candidate)
    if options.on_device:
        from parity.commands.check.on_device import check_options

        check_options(options, spec)
        if options.start_position:
            raise OptionError("--start-position and --on-device do not go together yet; leave out --on-device")
    if spec.offers("sequence"):
        from parity.commands.check.server import check_server

        return check_server(options, progress)
    if options.system is not None:
        raise OptionError("--system is a chat endpoint's system message; give the server's "
                          "http://HOST:PORT/v1/chat/completions address as the candidate, or leave --system out")
    if options.prompt is None and options.tokens is None and (recorded := spec.backend.recorded_tokens(spec.text)):
        progress.step(f"checking over the {len(recorded)} token ids {options.candidate} records")
        options = dataclasses.replace(options, tokens=recorded)
    if (options.prompt is None) == (options.tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")
    from parity.capture.hf.model import load_tokenizer, quiet_transformers

    quiet_transformers()
    if options.prompt is not None:
        load_tokenizer(options.model)  # up front: a missing or empty tokenizer is said before any work
    context = CandidateContext(model_path=options.model, dtype=options.candidate_dtype or options.dtype or "float32",
                               progress=progress, placement=_candidate_placement(options), kv_type=options.kv_type,
                               timeout_s=options.timeout_s)
    needs = ("trace", "load_dtype") if options.candidate_dtype else ("trace",)
    with open_candidate(options.candidate, context, needs=needs) as candidate, spill_directory() as spill:
        return _check(options, candidate, progress, spill)


def _logits_only(options: CheckOptions, hidden: str | None) -> CheckOptions:
    """The options of a check of a candidate whose layers cannot be seen (`hidden`: why): its logits alone, the
    reference captured for them alone; the layers are listed as not checked (`_with_not_checked`)."""
    if hidden is None:
        return options
    if not select(["logits"], options.checkpoints):
        raise OptionError(f"--checkpoints {options.checkpoints} leaves out the logits, the one checkpoint of "
                          f"{options.candidate} that can be compared: {hidden}")
    if options.replay:
        raise OptionError(f"--replay reruns each layer's ops, and none can be seen: {hidden}")
    return dataclasses.replace(options, checkpoints="logits")


def _capture_reference(reference_model, tokens: list[int], options: CheckOptions, candidate: Candidate,
                       reference_dtype: str, spill: str, progress, recipes=None, name: str = "reference") -> Trace:
    """The reference's trace: in memory, or written to the spill directory (as `name`.safetensors) and read back
    lazily when it is larger than SPILL_BYTES. With `recipes`, what rebuilds its attention probabilities is kept
    there instead of them (probabilities.py)."""
    from parity.core.trace import load_trace

    raw = options.raw and candidate.supports("raw") is None
    tracing = {"recipes": recipes} if recipes is not None else {}
    sized = _without_probabilities(options.checkpoints) if recipes is not None else options.checkpoints
    size = reference_trace_bytes(reference_model, len(tokens), reference_dtype, sized)
    if size <= SPILL_BYTES:
        progress.step(f"capturing the reference over {len(tokens)} tokens")
        return reference_model.capture(tokens, checkpoints=options.checkpoints, prompt=options.prompt,
                                       weights=options.weights, raw=raw, start_position=options.start_position,
                                       **tracing)
    _require_room_for_traces(reference_model, tokens, options, reference_dtype, spill, streaming=recipes is not None)
    return_freed_memory()
    if getattr(reference_model.model, "hf_device_map", None) is None:   # not spread by accelerate: each pass
        reference_model.park(Path(spill) / "reference-weights.bin")       # holds one module's weights at a time
    path = Path(spill) / f"{name}.safetensors"
    progress.step(f"capturing the reference over {len(tokens)} tokens into {path} (about {size / 2**30:.1f} GiB, "
                  "more than is held in memory)")
    reference_model.capture_to_file(tokens, path, checkpoints=options.checkpoints, prompt=options.prompt,
                                    weights=options.weights, raw=raw, start_position=options.start_position,
                                    **tracing)
    reference_model.rest()
    return load_trace(path)


def _candidate_placement(options: CheckOptions) -> Placement | None:
    """Where a model candidate loads: where the reference does with --on-device, or within the same memory caps and
    offload when they were given (a model too large for the machine is too large as a candidate too); else the CPU.
    A factory places its own module."""
    if options.placement is None:
        return None
    return options.placement if options.on_device or options.placement.offloads else None


def _require_room_for_traces(reference_model, tokens: list[int], options: CheckOptions, reference_dtype: str,
                             spill: str, streaming: bool = False) -> None:
    """Refuse a check whose spilled traces (the reference's, the calibration run's and the candidate's, at
    float32) would not fit where they are written (`streaming`: without the attention probabilities)."""
    from parity.commands.check.spill import require_room

    stored = _without_probabilities(options.checkpoints) if streaming else options.checkpoints

    def size(dtype: str, checkpoints: str | None = stored) -> int:
        return reference_trace_bytes(reference_model, len(tokens), dtype, checkpoints)

    needed = size(reference_dtype) + 2 * size("float32")
    without = size(reference_dtype, _without_probabilities(options.checkpoints))
    without += 2 * size("float32", _without_probabilities(options.checkpoints))
    require_room(spill, needed, needed - without, len(tokens))


def _without_probabilities(checkpoints: str | None) -> str:
    return f"{checkpoints or '*'},!*.attn_probs"


def _candidate_spill(reference_model, tokens: list[int], spill: str, checkpoints: str | None,
                     name: str = "candidate") -> str | None:
    """Where a candidate that can writes its trace as it is made (`name`.safetensors in the spill directory): when
    its trace (float32) would be larger than SPILL_BYTES."""
    if reference_trace_bytes(reference_model, len(tokens), "float32", checkpoints) <= SPILL_BYTES:
        return None
    return str(Path(spill) / f"{name}.safetensors")


def _check(options: CheckOptions, candidate: Candidate, progress, spill: str) -> Comparison:
    from parity.capture.hf.model import load_model

    options = _logits_only(options, candidate.hidden(options.taps))
    numerics = candidate.numerics
    calibrating = options.calibrate and options.tolerance is None and numerics is not None
    reference_dtype = options.dtype or ("float64" if calibrating else "float32")
    progress.step(f"loading {options.model} ({reference_dtype})")
    reference_model = load_model(options.model, dtype=reference_dtype, placement=options.placement)
    tokens = options.tokens if options.tokens is not None else reference_model.tokenize(options.prompt)
    reference_model.check_length(len(tokens))
    quantized_note = None   # --quantized-reference: what the reference took
    if options.quantized_reference:
        from parity.commands.check.quantized_reference import take_quantized_weights

        quantized_note = take_quantized_weights(reference_model, candidate, tokens, options, progress)
    if options.decode_steps > 0 and candidate.supports("logits") is None:
        reference_model.check_length(len(tokens) + options.decode_steps,
                                     what=f"the prompt ({len(tokens)} tokens) with --decode-steps {options.decode_steps}")
    if options.on_device:
        from parity.commands.check.on_device import forward_on_device

        measured = forward_on_device(options, reference_model, candidate, tokens, calibrating=calibrating,
                                     reference_dtype=reference_dtype, progress=progress)
        if measured is not None:
            comparison, reference_metadata = measured
            if quantized_note is not None:
                comparison = dataclasses.replace(comparison, notes=tuple(comparison.notes) + (quantized_note,))
            return _past_the_forward(comparison, Trace(tensors={}, metadata=reference_metadata), [], options,
                                     reference_model, candidate, calibrating, progress)
        progress.step("the on-device pass found a divergence: running again with full traces on the host, "
                      "to diagnose it")
    reference, trace, config, streamed = _forward_pass(options, reference_model, candidate, tokens, reference_dtype,
                                                       calibrating and numerics.needed(reference_dtype), spill,
                                                       progress)
    if options.save_traces:
        progress.step(f"saving both traces to {options.save_traces}")
        reference, trace = (
            dataclasses.replace(part, source=str(save_trace(part, Path(options.save_traces) / f"{role}.safetensors",
                                                            overwrite=options.overwrite)))
            for role, part in (("reference", reference), ("candidate", trace))
        )
    progress.step("comparing")
    from parity.diagnose.compared import compare_and_diagnose

    comparison = compare_and_diagnose(reference, trace, config, strict=options.strict, streamed=streamed.stream)
    comparison = streamed.noted(comparison)
    if quantized_note is not None:
        comparison = dataclasses.replace(comparison, notes=tuple(comparison.notes) + (quantized_note,))
    comparison, reference, trace, streamed = _rerouted(comparison, reference, trace, config, options, reference_model,
                                                       candidate, reference_dtype, spill, streamed, progress)
    held = _candidate_spill(reference_model, reference.tokens, spill, options.checkpoints) is None
    comparison = with_second_run(comparison, trace, candidate, options.request(reference_model), reference.tokens,
                                 progress, held=held)
    comparison = with_op_weights(comparison, reference_model, candidate, reference.tokens, options, progress,
                                 traces=(reference, trace))
    comparison = with_settings_tried(comparison, reference_model, reference, trace, config, options, progress)
    comparison = with_precision_measured(comparison, reference_model, reference, trace, candidate, options, progress)
    if options.replay:
        comparison = _with_replay(comparison, reference, candidate, options, progress)
    if options.on_device:
        comparison = dataclasses.replace(comparison, notes=tuple(comparison.notes) + (
            "the on-device pass found a divergence; these results come from a second run with full traces on "
            "the host, which the diagnosis reads",))
    return _past_the_forward(comparison, reference, trace.names, options, reference_model, candidate, calibrating,
                             progress)


def _rerouted(comparison: Comparison, reference: Trace, trace: Trace, config: CompareConfig, options: CheckOptions,
              reference_model, candidate: Candidate, reference_dtype: str, spill: str, streamed, progress):
    """(comparison, reference, candidate, streamed): a failing MoE check whose candidate routed tokens otherwise at
    near ties compared with the reference run again routed as it there (routing.py). The reference's trace is
    held or spilled as the first one was; where the attention probabilities were streamed, the candidate runs
    again too, its probabilities measured against the rerouted reference's as they are made."""
    from parity.commands.check import probabilities
    from parity.commands.check.routing import routed_as_candidate
    from parity.diagnose.compared import compare_and_diagnose

    if comparison.passed:
        return comparison, reference, trace, streamed
    latest = {"candidate": trace, "streamed": streamed, "round": 0}
    tokens = list(reference.tokens)

    def capture_routed(routes):
        from parity.capture.torch.routed import routed_as

        latest["round"] += 1
        suffix = f"routed-{latest['round']}"
        recipes = probabilities.recipes_in(spill, f"recipes-{suffix}") if streamed.stream is not None else None
        with routed_as(reference_model.model, reference_model.mapping.taps, routes) as rerouted:
            routed = _capture_reference(reference_model, tokens, options, candidate, reference_dtype, spill, progress,
                                        recipes, name=f"reference-{suffix}")
        reference_model.rest()
        routed = dataclasses.replace(routed, metadata={**routed.metadata, "routed_as_candidate": {
            name: {str(token): list(experts) for token, experts in chosen.items()} for name, chosen in routes.items()}})
        if options.save_traces:   # the reference compared is the one saved (written moments ago by this check)
            saved = save_trace(routed, Path(options.save_traces) / "reference.safetensors", overwrite=True)
            routed = dataclasses.replace(routed, source=str(saved))
        if recipes is not None:   # the candidate's probabilities measured again, against the rerouted reference's
            again = probabilities.Streamed.of(recipes, config)
            stored = _without_probabilities(options.checkpoints)
            request = options.request(reference_model, _candidate_spill(reference_model, tokens, spill, stored,
                                                                        name=f"candidate-{suffix}"), again.stream)
            progress.step("running the candidate again, its attention probabilities measured against the rerouted "
                          "reference's")
            candidate_trace = spilled(candidate.trace(tokens, request, progress), spill)
            reference_model.rest()
            routed, latest["candidate"] = again.finish(routed, candidate_trace, candidate, options, reference_model,
                                                       progress)
            latest["streamed"] = again
        return routed, rerouted

    def compare_again(routed: Trace) -> Comparison:
        now = latest["streamed"]
        return now.noted(compare_and_diagnose(routed, latest["candidate"], config, strict=options.strict,
                                              streamed=now.stream))

    comparison, reference = routed_as_candidate(comparison, reference, trace, config.noise, compare_again,
                                                capture_routed, progress)
    return comparison, reference, latest["candidate"], latest["streamed"]


def _forward_pass(options: CheckOptions, reference_model, candidate: Candidate, tokens: list[int],
                  reference_dtype: str, calibrates: bool, spill: str, progress):
    """(reference, candidate, config, streamed): both traces of the forward pass and the CompareConfig, calibrated
    where `calibrates`; with the attention probabilities measured as they were made (`streamed`, probabilities.py)
    when they are large, or asked for: the calibration then runs before the candidate."""
    from parity.commands.check import probabilities
    from parity.commands.check.calibration import calibrated

    recipes = probabilities.recipes_in(spill) if probabilities.streams_probabilities(
        options, reference_model, len(tokens), reference_dtype,
        tolerance_known=options.tolerance is not None or calibrates) else None
    reference = _capture_reference(reference_model, tokens, options, candidate, reference_dtype, spill, progress,
                                   recipes)
    config = CompareConfig(tolerance=options.tolerance, checkpoints=options.checkpoints)
    if recipes is not None and calibrates:   # first: each block of the candidate's is held to the floor it gives
        config = calibrated(config, reference, reference_model, candidate, options, progress, spill, recipes)
    streamed = probabilities.Streamed.of(recipes, config)
    stored = _without_probabilities(options.checkpoints) if streamed.stream is not None else options.checkpoints
    request = options.request(reference_model, _candidate_spill(reference_model, tokens, spill, stored),
                              streamed.stream)
    trace = spilled(candidate.trace(reference.tokens, request, progress), spill)
    reference_model.rest()
    if streamed.stream is not None:
        reference, trace = streamed.finish(reference, trace, candidate, options, reference_model, progress)
    elif calibrates:
        config = calibrated(config, reference, reference_model, candidate, options, progress, spill)
    return reference, trace, config, streamed


def _past_the_forward(comparison: Comparison, reference: Trace, candidate_names: list[str], options: CheckOptions,
                      reference_model, candidate: Candidate, calibrating: bool, progress) -> Comparison:
    """The forward pass's comparison with decoding checked after it, and the checks that did not run.
    (`reference`: its tokens and metadata are read, not its tensors.)"""
    from parity.commands.check.beyond_forward import with_decoding
    from parity.diagnose import without_noise_on_failure

    if options.start_position:
        comparison = dataclasses.replace(comparison, not_checked=tuple(comparison.not_checked) + (NotChecked(
            "decode", f"--start-position {options.start_position}: decoding through the cache is checked from "
                      "position 0 (run without --start-position)"),))
    else:
        comparison = with_decoding(comparison, reference, reference_model, candidate, steps=options.decode_steps,
                                   taps=options.taps, progress=progress, placement=options.placement)
    return without_noise_on_failure(_with_not_checked(comparison, candidate_names, candidate, options, calibrating))


def _with_not_checked(comparison: Comparison, candidate_names: list[str], candidate: Candidate,
                      options: CheckOptions, calibrating: bool) -> Comparison:
    """The comparison listing the one-pass checks that did not run, and why."""
    skipped = []
    if hidden := candidate.hidden(options.taps):
        skipped.append(NotChecked("layers", f"{hidden}; its logits were compared"))
    if options.calibrate and options.tolerance is None and not calibrating:
        skipped.append(NotChecked("calibration", f"the candidate's precision is unknown ({candidate.undeclared}): "
                                                 "the dtype tables' tolerances were used"))
    if not options.weights:
        read = " (the first divergence's were read after it, having no other explanation)" \
            if were_read(comparison) else ""
        skipped.append(NotChecked("weights", f"{NOT_ASKED}: --weights compares each tapped module's parameters{read}"))
    elif not any(name.endswith(".weight") for name in candidate_names):
        skipped.append(NotChecked("weights", candidate.supports("weights") or
                                  f"the candidate ({candidate.written}) gave no parameters"))
    if not options.replay:
        skipped.append(NotChecked("replay", f"{NOT_ASKED}: --replay reruns each block and op on the reference's "
                                            "inputs"))
    return dataclasses.replace(comparison, not_checked=tuple(skipped) + tuple(comparison.not_checked))


def _with_replay(comparison: Comparison, reference: Trace, candidate: Candidate, options: CheckOptions,
                 progress) -> Comparison:
    """The comparison with each block's and each op's own error, measured on the reference's inputs, the
    candidate's conventions adapted as in the comparison (held where --strict holds them)."""
    from parity.capture.torch.replay import replay_module
    from parity.core.conventions import adapt
    from parity.core.names import parse

    candidate.require("replay", "--replay")
    progress.step("replaying each block and op on the reference's inputs")
    replay = replay_module(candidate.module, reference, taps=candidate.taps(options.taps),
                           checkpoints=options.checkpoints)
    config = CompareConfig(tolerance=Tolerance(0.0, 0.0, "replay"), checkpoints=options.checkpoints,
                           align="layout" not in options.strict)
    ops, blocks = (compare(reference, adapt(reference, replayed, strict=options.strict)[0], config=config)
                   for replayed in (replay.ops, replay.blocks))
    return dataclasses.replace(
        comparison,
        local_rel_l2={r.name: r.metrics.rel_l2 for r in ops.checkpoints if r.metrics is not None},
        block_local_rel_l2={parse(r.name).layer: r.metrics.rel_l2 for r in blocks.checkpoints
                            if r.metrics is not None and parse(r.name) and parse(r.name).kind == "out"},
    )
