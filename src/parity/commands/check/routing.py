"""A failing check of an MoE candidate whose routing flipped at near ties: the reference run again routed as the
candidate routed there, and compared once more.

moe_experts admits a token the candidate sent to another expert where two router logits nearly tie
(core/routing.py): its low precision, not its code. From that token on, the candidate's MoE output is another
expert's; against the reference's it fails by design, and a correct bfloat16 port of an MoE model would fail
wherever a tie falls. So where the check fails and moe_experts admitted flips at or before the first divergence's
layer, the reference runs once more with exactly those tokens sent to the candidate's experts
(capture/torch/routed.py), and the candidate is compared with that run. A flip admitted only in a later layer
once the earlier ones are followed is followed in the next round. A flip that is not a near tie is never followed:
it fails as a routing bug.

Only a failing check pays: one more reference pass per round (held or spilled as the first was), and where the
attention probabilities are streamed, one more candidate pass too, its probabilities measured against the
rerouted reference's (commands/check/pipeline.py). The reference's trace is then the rerouted run's, and a note
says which tokens were rerouted. Two traces compared as files are compared as they are (diagnose/router.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from parity.core.experts_from_logits import with_experts_from_logits
from parity.core.names import parse
from parity.core.results import Comparison
from parity.core.routing import admitted_flips
from parity.core.trace import Trace

MAX_ROUNDS = 4   # each round follows the flips the previous one revealed; a ladder of more is not a near tie


def routed_as_candidate(comparison: Comparison, reference: Trace, candidate: Trace, noise, compare_again: Callable,
                        capture_routed: Callable, progress) -> tuple[Comparison, Trace]:
    """(comparison, reference): as given when nothing is to follow; else compared with a reference run routed as
    the candidate at its admitted near-tie flips. `compare_again(reference)` compares and diagnoses;
    `capture_routed(routes)` runs the reference with {experts checkpoint: {token: experts}} forced and returns
    (trace, Rerouted)."""
    routes: dict[str, dict[int, tuple[int, ...]]] = {}
    rerouted = None
    for _ in range(MAX_ROUNDS):
        found = _flips_to_follow(comparison, reference, candidate, noise, routes)
        if not found:
            break
        for name, tokens in found.items():
            routes.setdefault(name, {}).update(tokens)
        progress.step(f"running the reference again routed as the candidate at {count_routed(routes)} near-tie "
                      "token(s), to compare what follows them like for like")
        routed, run = capture_routed(routes)
        missed = sorted(name for name in routes if name not in run.tokens)
        if missed:   # a router whose output is not (logits, top-k weights, top-k ids): nothing was sent
            note = (f"the candidate routed tokens to other experts at near ties in {', '.join(missed)}, but the "
                    "reference's router there could not be made to route as it (its output is not (logits, "
                    "top-k weights, top-k ids)): compared without following them")
            return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (note,)), reference
        reference, rerouted = routed, run
        comparison = compare_again(reference)
        if comparison.passed:
            break
    if rerouted is None:
        return comparison, reference
    return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (_note(routes, rerouted),)), reference


def _flips_to_follow(comparison: Comparison, reference: Trace, candidate: Trace, noise,
                     routes: dict[str, dict[int, tuple[int, ...]]]) -> dict[str, dict[int, tuple[int, ...]]]:
    """The admitted flips not yet followed, in MoE layers up to the first divergence's (none when it passed)."""
    divergence = comparison.first_divergence
    if comparison.passed or divergence is None or divergence.layer is None:
        return {}
    candidate, _ = with_experts_from_logits(reference, candidate)   # a router recorded by its logits alone
    found = {}
    for name in reference.names:
        checkpoint = parse(name)
        if checkpoint is None or checkpoint.kind != "moe_experts" or name not in candidate \
                or checkpoint.layer > divergence.layer:
            continue
        flips = admitted_flips(name, reference, candidate, (noise or {}).get(name))
        new = {token: experts for token, experts in flips.items() if routes.get(name, {}).get(token) != experts}
        if new:
            found[name] = new
    return found


def count_routed(routes: dict[str, dict[int, tuple[int, ...]]]) -> int:
    return sum(len(tokens) for tokens in routes.values())


def _note(routes: dict[str, dict[int, tuple[int, ...]]], rerouted) -> str:
    followed = "; ".join(f"{name} token{'s' if len(tokens) > 1 else ''} "
                         + ", ".join(f"{token} to {list(experts)}" for token, experts in sorted(tokens.items()))
                         for name, tokens in sorted(routes.items(), key=lambda item: parse(item[0]).layer))
    kept = (f"; no weight rule fitted the router's output in {', '.join(sorted(rerouted.weights_kept))}: each "
            "new expert took the weight of the one it replaced") if rerouted.weights_kept else ""
    return (f"the candidate routed {count_routed(routes)} token(s) to other experts at near ties of the router's "
            f"logits (its precision's doing): the reference was run again routed as the candidate there ({followed}), "
            f"and everything is compared with that run{kept}")
