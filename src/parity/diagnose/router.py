"""router: an MoE block routed tokens to other experts.

moe_experts is compared as agreement (core/routing.py). When it is where the
error first shows, say which part of the routing went wrong: the router's
logits already differ (its input or weights), or they agree and the choice
made from them differs (top-k over the wrong axis, a softmax or normalisation
in the wrong place, another k).

routing_near_tie: the error begins at a token whose routing flipped at a near tie
(admitted by moe_experts: the candidate's precision moved two nearly equal router
logits past each other). That token then went to another expert, so its MoE output
and everything after it differ by design; not a bug in the port's code. parity check
follows such flips itself (commands/check/routing.py); this is what is said where it
could not: traces compared as files, or a router whose output it cannot rewrite.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context


@register("router")
def router(context: Context):
    for name, checkpoint in _focused_routing(context):
        experts_name = f"layers.{checkpoint.layer}.moe_experts"
        logits_name = f"layers.{checkpoint.layer}.moe_router_logits"
        experts, logits = context.comparison.result(experts_name), context.comparison.result(logits_name)
        if experts is None or not experts.failed:
            continue
        reference, candidate = context.reference[experts_name], context.candidate[experts_name]
        if reference.shape != candidate.shape:
            yield Diagnosis("router", experts_name, f"the candidate chooses {candidate.shape[-1]} experts per token, "
                                                    f"the reference {reference.shape[-1]}: another top-k")
        elif logits is not None and logits.failed:
            yield Diagnosis("router", name, f"the router logits differ ({logits_name} fails), and so {experts.reason}: "
                                            "look at the router's input and weights")
        elif logits is not None:
            hint = _wrong_axis(context.candidate[logits_name], candidate)
            yield Diagnosis("router", experts_name, f"{experts.reason}, although the router logits agree: the choice "
                                                    f"made from them is wrong{hint}")


@register("routing_near_tie")
def routing_near_tie(context: Context):
    divergence = context.comparison.first_divergence
    if divergence is None or divergence.layer is None or divergence.onset is None:
        return
    for layer in range(divergence.layer + 1):
        name = f"layers.{layer}.moe_experts"
        result = context.comparison.result(name)
        if result is None or result.failed or name not in context.candidate:
            continue
        reference, candidate = np.asarray(context.reference[name]), np.asarray(context.candidate[name])
        if reference.shape != candidate.shape:
            continue
        flipped = [t for t, (r, c) in enumerate(zip(reference.reshape(len(reference), -1),
                                                    candidate.reshape(len(candidate), -1))) if set(r) != set(c)]
        if divergence.onset in flipped:
            token = divergence.onset
            yield Diagnosis(
                "routing_near_tie", divergence.checkpoint,
                f"the error begins at token {token}, which {name} routed to other experts at a near tie of the "
                f"router's logits (reference {sorted(reference[token].tolist())}, candidate "
                f"{sorted(candidate[token].tolist())}; admitted as the candidate's precision's doing): from that "
                "token on, its MoE output and what follows differ because it went to another expert, not for a "
                "bug in the code (parity check runs the reference again routed as the candidate at such tokens "
                "where its router can be made to; traces compared as files are compared as they are)")
            return


def _focused_routing(context: Context):
    from parity.core.names import parse

    for name in context.focus:
        checkpoint = parse(name)
        if checkpoint is not None and checkpoint.kind in ("moe_experts", "moe_router_logits"):
            yield name, checkpoint


def _wrong_axis(logits: np.ndarray, chosen: np.ndarray) -> str:
    """' (softmax over the tokens ...)' when the ids chosen are the per-token top-k of the
    router logits normalised over the token axis instead of over the experts."""
    logits = np.asarray(logits, dtype=np.float64)
    k = chosen.shape[-1]
    if logits.ndim != 2 or logits.shape[0] != chosen.shape[0] or k >= logits.shape[1]:
        return ""
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    over_tokens = shifted / shifted.sum(axis=0, keepdims=True)                 # each expert's column sums to 1
    picked = np.sort(np.argsort(-over_tokens, axis=-1)[:, :k], axis=-1)
    if np.array_equal(picked, np.sort(chosen, axis=-1)):
        return (": they are the top-k of the router's softmax taken over the token axis, "
                "not over the experts (experts chosen from the wrong axis)")
    return ""
