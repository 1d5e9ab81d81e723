"""post_norm_skipped: a branch's output added to the residual without its post norm.

Gemma 2/3 and OLMo 2 norm the attention (and MLP) output before the residual
add. A port that skips it adds the raw branch: resid_mid = input + attn_out
instead of input + attn_post_norm (and out = resid_mid + mlp_out instead of
resid_mid + mlp_post_norm). Named when the candidate's sum is explained by the
un-normed branch.
"""

from __future__ import annotations

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches

# the sum checkpoint -> (its residual input, the post norm, the branch output it norms)
SUMS = {"resid_mid": ("<in>", "attn_post_norm", "attn_out"), "out": ("resid_mid", "mlp_post_norm", "mlp_out")}


@register("post_norm_skipped")
def post_norm_skipped(context: Context):
    for name, checkpoint, reference, candidate in context.focused(*SUMS):
        residual_kind, norm_kind, branch_kind = SUMS[checkpoint.kind]
        layer = checkpoint.layer
        residual_name = (("embed" if layer == 0 else f"layers.{layer - 1}.out") if residual_kind == "<in>"
                         else f"layers.{layer}.{residual_kind}")
        norm_name, branch_name = f"layers.{layer}.{norm_kind}", f"layers.{layer}.{branch_kind}"
        if norm_name not in context.reference:
            continue  # this family has no post norm here
        residual, branch = context.pair(residual_name), context.pair(branch_name)
        if residual is None or branch is None:
            continue
        architecture = context.reference.metadata.get("architecture")
        scale = (architecture.get("residual_multiplier") if isinstance(architecture, dict) else None) or 1.0
        hypothesis = residual[1] + scale * branch[1]   # the candidate's own input plus its un-normed branch
        if matches(candidate, hypothesis, reference) is not None:
            absent = " (the candidate records no " + norm_name + ")" if norm_name not in context.candidate else ""
            yield Diagnosis("post_norm_skipped", name,
                            f"the candidate's {name} is its {residual_name} plus its {branch_name} un-normed: "
                            f"the {norm_kind.replace('_', ' ')} is skipped{absent}")
