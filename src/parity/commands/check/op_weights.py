"""A failure no detector explains, at an op with weights: that op's weights, read from both sides and compared.
(Also where the only cause named is the output projection, which cannot see its weights, or a narrower
precision than declared, which weights rounded to it and held as float32 also show.)

A port's loader is where many bugs live (a Conv1D weight not transposed, another layer's
weights, a scale folded in twice), and they leave no mark in the activations that a
detector can name: the first divergence is "introduced" at the op, its input passes, and
nothing else fits. `--weights` reads every tapped module's parameters up front; without
it, a check whose first divergence is left as `no_known_cause` reads the parameters of
that one op from the reference and the candidate (one more pass of each, recording that
checkpoint alone) and compares them: a weight that differs is the diagnosis
(`weight_mismatch`), and weights that are the same are said, so that the op itself is
suspected.
"""

from __future__ import annotations

import dataclasses

from parity.core.names import weight_of
from parity.core.results import Comparison, Diagnosis

UNEXPLAINED = "no_known_cause"
# causes that leave the op's weights to be read: values of a narrower float format (declared_precision) may be
# weights rounded to it and held as float32 (a float16 GGUF dequantized as it loaded), not a narrower computation
WEIGHTS_SUSPECTED = frozenset({UNEXPLAINED, "output_projection", "declared_precision"})
READ_AFTER = "read after the check"   # in the diagnosis or note that reports them: were_read() finds it


def with_op_weights(comparison: Comparison, reference_model, candidate, tokens: list[int], options,
                    progress, traces=None) -> Comparison:
    """The comparison with its unexplained first divergence explained by that op's weights, where they differ, or
    by the same weights applied to another tensor (`traces`: the check's reference and candidate); as it was where
    nothing can be read (weights asked for already, or a candidate that gives none)."""
    checkpoint = _suspecting_weights(comparison)
    if checkpoint is None or options.weights or candidate.supports("weights") is not None:
        return comparison
    progress.step(f"reading the weights of {checkpoint} from both sides, to tell whether its error is in them")
    only = dataclasses.replace(options, checkpoints=checkpoint, weights=True, raw=False)
    reference = reference_model.capture(tokens, checkpoints=checkpoint, weights=True, raw=False,
                                        start_position=options.start_position)
    reference_model.rest()
    traced = candidate.trace(tokens, only.request(reference_model), progress)
    parameters = sorted(name for name in set(reference.tensors) & set(traced.tensors) if weight_of(name))
    if not parameters:
        return comparison
    reordered = _rows_reordered(reference, traced, parameters)
    found = None if reordered else _weight_mismatch(comparison, reference, traced)
    if found is None and not reordered and traces is not None:
        found = _read_otherwise(comparison, traces, reference, traced, parameters)
    if found is None:
        read = " and ".join(weight_of(name)[1] for name in parameters)
        were, are = ("was", "is") if len(parameters) == 1 else ("were", "are")
        order = f" ({checkpoint.rsplit('.', 1)[1]}'s rows in another order, as a port that rotates pairs (2i, 2i+1) " \
            "holds them)" if reordered else ""
        note = (f"the {read} of {checkpoint} {were} {READ_AFTER} from both sides and {are} the same{order}: "
                "the error is made by the op that uses them, not by its weights")
        return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (note,),
                                   diagnoses=tuple(_weights_read(d) for d in comparison.diagnoses))
    found = dataclasses.replace(found, message=found.message + f" ({READ_AFTER}, as --weights reads them)")
    unexplained = [d for d in comparison.diagnoses if d.cause == UNEXPLAINED and d.checkpoint == checkpoint]
    diagnoses = tuple(found if d in unexplained else _weights_read(d) for d in comparison.diagnoses
                      if not _superseded(d, found))
    return dataclasses.replace(comparison, diagnoses=diagnoses if unexplained else diagnoses + (found,))


def _read_otherwise(comparison: Comparison, traces, reference, candidate, parameters: list[str]) -> Diagnosis | None:
    """The same weights, found applied to another tensor than the op's input (a head wired to a layer's norm):
    the check's traces searched with the weights read beside them."""
    from collections import ChainMap

    from parity.diagnose.context import Context
    from parity.diagnose.wiring import read_otherwise

    checkpoint = comparison.first_divergence.checkpoint
    with_weights = [dataclasses.replace(trace, tensors=ChainMap({name: read[name] for name in parameters}, trace.tensors))
                    for trace, read in zip(traces, (reference, candidate))]
    found = read_otherwise(Context(comparison, *with_weights), checkpoint)
    if found is None:
        return None
    return Diagnosis("wiring", checkpoint, f"{found}, with the same weights on both sides")


def _superseded(diagnosis: Diagnosis, found: Diagnosis) -> bool:
    """Whether the weights' diagnosis explains `diagnosis` (at the same checkpoint) as the detectors rank them."""
    from parity.diagnose import SUPERSEDES

    return diagnosis.checkpoint == found.checkpoint and diagnosis.cause in SUPERSEDES.get(found.cause, ())


def _weights_read(diagnosis: Diagnosis) -> Diagnosis:
    """A diagnosis that asked for the weights, without the asking: they were read."""
    from parity.diagnose.ops import ASK_FOR_WEIGHTS

    return dataclasses.replace(diagnosis, message=diagnosis.message.replace(ASK_FOR_WEIGHTS, ""))


def _suspecting_weights(comparison: Comparison) -> str | None:
    """The checkpoint of the first divergence, where its only diagnoses leave its weights to be read: none
    explains it (no_known_cause), or one names the op whose weights it cannot see (output_projection)."""
    divergence = comparison.first_divergence
    if divergence is None:
        return None
    causes = [d for d in comparison.diagnoses if d.checkpoint == divergence.checkpoint]
    return divergence.checkpoint if causes and all(d.cause in WEIGHTS_SUSPECTED for d in causes) else None


def _rows_reordered(reference, candidate, parameters: list[str]) -> bool:
    """Whether q's or k's weight holds the reference's rows in RoPE's pair order (a port that rotates pairs
    (2i, 2i+1): Meta's checkpoints permute their rows so), which the comparison's rope_pairs convention reads in
    the reference's order, not a mistake."""
    from parity.core.metrics import rel_l2
    from parity.core.rope_layout import rotated_head_dim, unpermute_rows
    from parity.diagnose.context import widened

    head_dim = rotated_head_dim(reference)

    def reordered(name: str) -> bool:
        ours, theirs = widened(reference[name]), widened(candidate[name])
        if ours.shape != theirs.shape or ours.shape[0] % head_dim or rel_l2(ours, theirs) < 1e-6:
            return False
        return rel_l2(ours, unpermute_rows(theirs, head_dim)) <= 8e-3     # the same rows, to a bfloat16 rounding

    return head_dim is not None and any(weight_of(name)[0].endswith((".q", ".k")) and weight_of(name)[1] == "weight"
                                        and reordered(name) for name in parameters)


def _weight_mismatch(comparison: Comparison, reference, candidate) -> Diagnosis | None:
    """How the read weights differ: a quantized build's held to their grid first (weight_rounding), or the same
    and its op quantizing its input (activation_quantization), else the first that differs (weight_mismatch)."""
    from itertools import chain

    from parity.diagnose.context import Context
    from parity.diagnose.rounding import activation_quantization, weight_rounding
    from parity.diagnose.weights import weight_mismatch

    context = Context(comparison, reference, candidate)
    return next(chain(weight_rounding(context), activation_quantization(context), weight_mismatch(context)), None)


def were_read(comparison: Comparison) -> bool:
    """Whether the first divergence's weights were read after the check (for the "not checked" line)."""
    return any(READ_AFTER in text for text in (*comparison.notes, *(d.message for d in comparison.diagnoses)))
