"""A failure of a candidate whose precision is unknown, measured against the noise of each narrower computation.

A candidate that declares no precision and shows none (a function returning float32 logits, a trace
without a dtype) is held to float32's tolerances: a port that computes in bfloat16 and hands its logits
over in float32 (its head run in float32, or widened by a binding) fails them, correctly by those
tolerances and wrongly for what it is; so does an engine's int8 build. Where such a failure is left
unexplained, the reference is run in bfloat16, in float16, and in float32 with int8 weights and
activations (a scale per row: capture/torch/int8_rows.py) over the same tokens, recording the failing
checkpoints alone, and the note says which of them makes an error the candidate's is within 3x of, and
how to declare a 16-bit one. A computation fits only where the candidate errs at every token position by
at least a tenth of what that computation's run does there: such a computation rounds every position,
and a bug of the same size may leave some exact (a RoPE bug leaves position 0 as it was). The verdict is
not changed: a precision is never assumed, since a wider bound would let real bugs through.

Three more forward passes of the reference, each loading a copy of it (SmolLM2: about 1.5 s and 1 GB more
at its peak), for a failing check whose first divergence no detector explains, of at most MAX_TOKENS
tokens and a model of at most MAX_PARAMETERS held in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from parity.commands.check.settings import unexplained
from parity.core.calibrate import MULTIPLE
from parity.core.metrics import rel_l2
from parity.core.results import Comparison

INT8_ROWS = "int8 weights and activations with a scale per row"
PRECISIONS = ("bfloat16", "float16", INT8_ROWS)
MAX_TOKENS = 1024
MAX_PARAMETERS = 2_000_000_000   # each precision's run loads a copy of the model: 4 GB at 2B parameters
ROUNDED_SHARE = 10      # a precision's run errs at every position; the candidate by at least a tenth of it there


def with_precision_measured(comparison: Comparison, reference_model, reference_trace, candidate_trace, candidate,
                            options, progress) -> Comparison:
    """The comparison with a note saying which narrower computation's noise its failure is within, where the
    candidate's precision is unknown and nothing explains the failure."""
    if comparison.passed or comparison.calibrated or candidate.numerics is not None or options.tolerance \
            or options.placement or unexplained(comparison) is None or _parameters(reference_model) > MAX_PARAMETERS:
        return comparison
    tokens = list(reference_trace.tokens or ())
    failed = [result for result in comparison.checkpoints if result.failed and result.metrics is not None
              and result.name in reference_trace and result.name in candidate_trace
              and reference_trace.shape_of(result.name) == candidate_trace.shape_of(result.name)]
    if not tokens or len(tokens) > MAX_TOKENS or not failed:
        return comparison
    progress.step("the candidate's precision is unknown: measuring the noise of bfloat16, float16 and int8 "
                  "weights and activations")
    fits = []
    for precision in PRECISIONS:
        run = _run_at(reference_model, tokens, [result.name for result in failed], precision, options)
        if run is None or not all(result.name in run for result in failed):
            continue
        noise = {result.name: rel_l2(reference_trace[result.name], run[result.name]) for result in failed}
        ratios = {result.name: result.metrics.rel_l2 / noise[result.name] for result in failed
                  if noise[result.name] > 0}
        if len(ratios) == len(failed) and max(ratios.values()) <= MULTIPLE \
                and all(_rounded_everywhere(reference_trace, candidate_trace, run, result.name) for result in failed):
            worst = max(ratios, key=ratios.get)
            fits.append((precision, f"{precision} (at {worst}, rel_l2 {comparison.result(worst).metrics.rel_l2:.2g} "
                                    f"against its {noise[worst]:.2g})"))
    return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (_note(fits),))


def _note(fits: list[tuple[str, str]]) -> str:
    """What the fitting computations say: a 16-bit one can be declared; int8's cannot be calibrated."""
    if not fits:
        return (f"its error is not what bfloat16, float16 or int8 rounding makes (within {MULTIPLE:g}x of its noise "
                "at every failing checkpoint, and at every token position): not a narrower computation's rounding "
                "alone")
    sixteen = [precision for precision, _ in fits if precision != INT8_ROWS]
    sizes = []
    if sixteen:
        sizes.append(f"a port that computes in {sixteen[0]} and hands over float32 makes an error this size (declare "
                     f"it: `parity_dtype = \"{sixteen[0]}\"` on the function or module, or the trace's `dtype` "
                     "metadata, and the check calibrates there)")
    if any(precision == INT8_ROWS for precision, _ in fits):
        sizes.append("an int8 build's own error is this size (CTranslate2's int8, an engine's dynamic quantization: "
                     "parity cannot hold one to its own noise without reading its weights, and a bug no larger "
                     "would look the same)")
    return (f"its error is within {MULTIPLE:g}x the noise that {' and '.join(text for _, text in fits)} alone makes "
            f"at every failing checkpoint: {'; '.join(sizes)}; one that computes in float32 does not, and the "
            "failure stands")


def _parameters(reference_model) -> int:
    return sum(parameter.numel() for parameter in reference_model.model.parameters())


def _run_at(reference_model, tokens: list[int], names: list[str], precision: str, options):
    """The reference's trace at `names`, run at `precision`; None where it cannot be loaded or run so."""
    from parity.capture.precision import DtypeNumerics
    from parity.capture.torch.int8_rows import int8_rows

    try:
        with DtypeNumerics("float32" if precision == INT8_ROWS else precision).reference(reference_model) as model:
            with int8_rows(model.model) if precision == INT8_ROWS else contextlib.nullcontext():
                return model.capture(tokens, checkpoints=",".join(names), raw=False,
                                     start_position=options.start_position)
    except Exception:   # noqa: BLE001 - a model that cannot be loaded or run at this precision
        return None
    finally:
        reference_model.rest()


def _rounded_everywhere(reference_trace, candidate_trace, run, name: str) -> bool:
    """Whether the candidate errs at every token position by at least a tenth of what the precision's run does
    there: a computation at that precision rounds every position, and a bug may leave some exact (RoPE at
    position 0)."""
    from parity.core.metrics import per_position_rel_l2
    from parity.core.names import parse

    if run[name].shape != reference_trace[name].shape:
        return False
    checkpoint = parse(name)
    axis = checkpoint.token_axis if checkpoint is not None else 0
    precision_error = per_position_rel_l2(reference_trace[name], run[name], axis)            # (T,)
    candidate_error = per_position_rel_l2(reference_trace[name], candidate_trace[name], axis)
    held = np.isfinite(precision_error) & np.isfinite(candidate_error)
    return bool(np.all(candidate_error[held] >= precision_error[held] / ROUNDED_SHARE))
