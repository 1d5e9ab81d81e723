"""Detectors for an op left out or half applied: op_skipped (a checkpoint holds an earlier one),
norm_affine (a norm that ignores its weight or bias), output_projection (the logits' matmul)."""

from __future__ import annotations

import numpy as np

from parity.core.names import in_flow_order, inputs_of, parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches, same_tensor, widened
from parity.diagnose.layers import _fit_affine, norm_rows

UNRELATED_COSINE = 0.3  # logits this little aligned with the reference's come from another weight

ASK_FOR_WEIGHTS = " Run with --weights to compare the weight itself"   # dropped where they were read


@register("op_skipped")
def op_skipped(context: Context):
    """The candidate's checkpoint holds the reference's input to it, or an earlier checkpoint: the ops
    between the two never ran (a norm forgotten, a block skipped)."""
    for name, checkpoint, reference, candidate in context.focused():
        for earlier in _earlier(context, name, checkpoint):
            # the very tensor (the candidate's own, or the reference's within the candidate's error there):
            # a near copy is not an op left out (a residual added to a large tensor stays close to it)
            residual = same_tensor(context, candidate, earlier)
            if residual is None or matches(candidate, widened(context.reference[earlier]), reference) is None:
                continue
            direct = earlier in inputs_of(name, context.reference.tensors)
            what = (f"its input {earlier}: the op that makes {checkpoint.kind} was skipped" if direct
                    else f"the reference's earlier {earlier}: every op from there to {name} was skipped")
            yield Diagnosis("op_skipped", name, f"the candidate's {name} equals {what} (rel error {residual:.2g})")
            return


def _earlier(context: Context, name: str, checkpoint) -> list[str]:
    """Reference checkpoints of the candidate's shape that come before `name`: its inputs first, then the
    closest ones."""
    shape = context.reference[name].shape
    flow = in_flow_order(n for n in context.reference.names if parse(n) is not None)
    before = [n for n in flow[: flow.index(name)] if context.reference[n].shape == shape]
    direct = [n for n in inputs_of(name, context.reference.tensors) if n in before]
    return direct + [n for n in reversed(before) if n not in direct]


@register("norm_affine")
def norm_affine(context: Context):
    """A norm that normalizes right but skips its weight (gamma), its bias (beta), or both."""
    config = context.config
    for name, centred, y_reference, y_candidate in norm_rows(context):
        normalized = centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + config.norm_eps)
        gamma, beta = _fit_affine(normalized, y_reference, config.norm == "layer")
        if gamma is None:
            continue
        hypotheses = {"its weight": normalized + beta, "both its weight and its bias": normalized}
        if config.norm == "layer":
            hypotheses = {"its bias": gamma * normalized, **hypotheses}
        for ignored, hypothesis in hypotheses.items():
            if ignored != "its weight" and config.norm != "layer":
                continue
            residual = matches(y_candidate, hypothesis.reshape(y_candidate.shape), y_reference)
            if residual is not None:
                yield Diagnosis("norm_affine", name,
                                f"the reference's input normalized with the reference's epsilon but without "
                                f"{ignored} reproduces the candidate's {name} (rel error {residual:.2g}): the norm "
                                f"ignores {ignored} (loaded but not applied, or not loaded and left at its default)")
                return


@register("output_projection")
def output_projection(context: Context):
    """The logits fail while their input (final_norm) passes: the output projection's weight (or the
    tied embedding it should share) is not the reference's."""
    comparison = context.comparison
    final_norm, logits = comparison.result("final_norm"), comparison.result("logits")
    if final_norm is None or logits is None or not final_norm or logits or "logits" not in context.focus:
        return
    if final_norm.metrics is None:
        return   # final_norm not comparable (a graph that fuses it away): its passing is not known
    pair = context.pair("logits")
    if pair is None:
        return
    reference, candidate = pair
    cosine = float(np.sum(reference * candidate) / (np.linalg.norm(reference) * np.linalg.norm(candidate) or 1.0))
    offset = (candidate - reference).mean(axis=0)                                        # (V,)
    bias = matches(candidate, reference + offset, reference) if reference.shape[0] > 1 else None
    if bias is not None:
        how = f"a constant per-token offset explains it (rel error {bias:.2g}): a bias the reference has not"
    elif cosine < UNRELATED_COSINE:
        how = (f"the candidate's logits are unrelated to the reference's (cosine {cosine:.2f}): a weight never loaded "
               "(an lm_head left at its random initialization, or untied from the token embedding)")
    else:
        how = f"cosine {cosine:.3f} with the reference's: another or a partly converted weight"
    tied = context.reference.metadata.get("config", {}).get("tie_word_embeddings")
    tying = " The reference ties lm_head to the token embedding." if tied else ""
    yield Diagnosis("output_projection", "logits",
                    f"logits fail (rel_l2 {logits.metrics.rel_l2:.3g}) while their input final_norm passes "
                    f"(rel_l2 {final_norm.metrics.rel_l2:.3g}): the output projection is wrong; {how}.{tying}"
                    + ASK_FOR_WEIGHTS)
