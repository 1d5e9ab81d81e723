"""Detectors that name likely causes from the tensors of a comparison.

Each detector is a small function registered under the cause it names; it sees
the comparison and both traces and yields Diagnosis objects (a named cause with
its evidence) or plain strings (notes). A detector reports only on strong
evidence: no diagnosis is better than a wrong one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from parity.core.results import Comparison, Diagnosis
from parity.core.trace import Trace

Detector = Callable[["Context"], Iterable[Diagnosis | str]]
DETECTORS: dict[str, Detector] = {}
# Causes that describe a symptom that specific causes also produce (a wrong norm
# epsilon rescales rows; a missing residual leaves the branch's tensor in place; a
# norm without its bias, or a slightly different activation, shifts by a constant row):
# reported only where no specific cause explains the checkpoint.
GENERIC = frozenset({"scale_factor", "swapped", "missing_bias", "wiring"})
# A cause that explains another's evidence at the same checkpoint: probabilities
# stored transposed put weight above the diagonal without any mask being wrong.
SUPERSEDES = {"layout_permuted": frozenset({"causal_mask", "wiring",
                                            # the output's heads reordered: no head reads another KV head
                                            "gqa_head_mapping"}),
              # a specific way of reading the wrong tensor, named as such
              # (and logits that are their input, the head's output, uncapped: the projection was right)
              "op_skipped": frozenset({"wiring", "output_projection"}), "swapped_operands": frozenset({"wiring"}),
              "gqa_head_mapping": frozenset({"wiring"}),
              # the head's weight applied to another tensor than the final norm reproduces the logits: what made
              # the projection look wrong
              "wiring": frozenset({"output_projection"}),
              # a norm's weight convention rescales its channels: not a scale, a bias or an epsilon
              "norm_weight_convention": frozenset({"scale_factor", "missing_bias", "norm_epsilon", "norm_affine"}),
              "embedding_scale": frozenset({"op_skipped", "scale_factor"}),
              # a norm of another kind reproduced whole is no epsilon or scale fitted nearly
              "norm_variant": frozenset({"norm_epsilon", "scale_factor"}),
              # a residual add left out is the specific case of that op skipped
              "missing_residual": frozenset({"op_skipped"}),
              # shards gathered in another order make logits unlike the reference's from a right input
              "gather_order": frozenset({"output_projection"}),
              # Rounded weights change every tensor from the embedding on: heuristic readings of the same
              # numbers (a rescaled row, a noisy one) are that rounding, seen from inside.
              # (a GGUF's float16 weights are also a narrower format than the trace declares: the rounding says which)
              # (and a quantized build's weights, held to their own grid, are not another weights' mismatch)
              "weight_rounding": frozenset({"scale_factor", "swapped", "norm_epsilon", "activation_variant",
                                            "declared_precision", "weight_mismatch"})}


def register(cause: str) -> Callable[[Detector], Detector]:
    def add(detector: Detector) -> Detector:
        if cause in DETECTORS:
            raise ValueError(f"a detector for '{cause}' is already registered")
        DETECTORS[cause] = detector
        return detector

    return add


def diagnose(comparison: Comparison, reference: Trace, candidate: Trace) -> Comparison:
    """The comparison with the diagnoses and notes of every detector that applies."""
    from parity.diagnose import attention, layers, noise, rounding, values, weights  # noqa: F401  (register them)
    from parity.diagnose import attention_math, biases, block_input, ops, rope, rope_attention  # noqa: F401
    from parity.diagnose import embedding_scale, masks, norms, post_norm, router  # noqa: F401  (family-specific causes)
    from parity.diagnose import identities, structure, wiring  # noqa: F401  (the general mechanisms)
    from parity.diagnose import declared_precision  # noqa: F401  (a port narrower than it declares)
    from parity.diagnose import tensor_parallel  # noqa: F401  (causes of tensor-parallel ports, from their ranks)
    from parity.diagnose.context import Context, model_config

    # the first divergence's layer's own configuration, where a model's layers differ (Gemma 4's head size)
    layer = comparison.first_divergence.layer if comparison.first_divergence is not None else None
    context = Context(comparison, reference, candidate, model_config(reference, layer))
    diagnoses, notes = list(comparison.diagnoses), list(comparison.notes)
    for detector in DETECTORS.values():
        for finding in detector(context):
            (notes if isinstance(finding, str) else diagnoses).append(finding)
    diagnoses = _without_superseded(diagnoses)
    if comparison.first_divergence is not None and not diagnoses:
        from parity.diagnose.unexplained import no_known_cause

        unexplained = no_known_cause(context)  # the evidence, never "precision noise", for a failure
        diagnoses += [unexplained] if unexplained is not None else []
    return dataclasses.replace(comparison, diagnoses=tuple(diagnoses), notes=tuple(notes))


def without_noise_on_failure(comparison: Comparison) -> Comparison:
    """The comparison without a precision_noise diagnosis when any part of it failed (decoding
    checked after the forward pass, say): noise is said only of a run that passes throughout."""
    if comparison.passed or not any(d.cause == "precision_noise" for d in comparison.diagnoses):
        return comparison
    kept = tuple(d for d in comparison.diagnoses if d.cause != "precision_noise")
    return dataclasses.replace(comparison, diagnoses=kept, notes=tuple(comparison.notes) + (
        "every checkpoint of the forward pass is within its noise floor, but the run failed after it (see above)",))


def _without_superseded(diagnoses: list[Diagnosis]) -> list[Diagnosis]:
    at = {}
    for diagnosis in diagnoses:
        at.setdefault(diagnosis.checkpoint, set()).add(diagnosis.cause)

    named = {d.cause for d in diagnoses} - {"precision_noise"}

    def superseded(diagnosis: Diagnosis) -> bool:
        if diagnosis.cause == "precision_noise" and named:
            return True  # a named cause explains the failure better than "it looks like noise"
        others = at[diagnosis.checkpoint] - {diagnosis.cause}
        if diagnosis.cause in GENERIC and others - GENERIC - SUPERSEDES.get(diagnosis.cause, frozenset()):
            return True
        return any(diagnosis.cause in SUPERSEDES.get(other, ()) for other in others)

    return [diagnosis for diagnosis in diagnoses if not superseded(diagnosis)]
