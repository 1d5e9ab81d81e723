"""A Mixture-of-Experts model run with chosen tokens sent to chosen experts.

A low-precision candidate can route a token to another expert where two of its router's
logits nearly tie: moe_experts admits that flip (core/routing.py), but from that token on
the candidate's MoE output, and what follows it, is another expert's, and no tolerance
should cover that. The reference is then run once more routed as the candidate routed
there (commands/check/routing.py), so that everything after the flip is compared like
for like.

The router's output is rewritten, not its logits: a forward hook on each router module
(the (logits, top-k weights, top-k ids) taps of io "router") replaces, at the chosen
tokens, the ids the reference dropped with those the candidate took, slot for slot.
Each new expert's weight is what the model's own rule gives it, read off the router's
output at every token of the call: weights proportional to exp(logit) (a softmax) or to
sigmoid(logit), normalised over every expert, over the chosen ones, or not at all, times
one constant (a routed scaling factor). Where no such rule fits the call, an expert takes
the weight of the one it replaces (the two logits are within the precision's noise of each
other) and `Rerouted.weights_kept` says so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from parity.capture.torch.taps import fill_layer, index_taps, matching_taps, resolve_taps

RULE_RTOL = 1e-4   # transformers' routers take their softmax in float32, whatever the logits' dtype


@dataclass
class Rerouted:
    """What a routed run did: the tokens rerouted per experts checkpoint, and the checkpoints where no weight
    rule fitted."""

    tokens: dict[str, list[int]] = field(default_factory=dict)
    weights_kept: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"<Rerouted {sum(map(len, self.tokens.values()))} tokens in {len(self.tokens)} layers>"


@contextlib.contextmanager
def routed_as(model, taps, routes: dict[str, dict[int, tuple[int, ...]]]):
    """Within: `model`'s routers send each token of `routes` ({"layers.1.moe_experts": {8: (6, 15, 20)}}) to
    those experts. Yields the `Rerouted` that the forward passes fill in."""
    exact, patterns = index_taps(resolve_taps(taps))
    rerouted = Rerouted()
    with contextlib.ExitStack() as stack:
        for path, module in model.named_modules():
            for tap, match in matching_taps(path, exact, patterns):
                experts_name = fill_layer(tap.names[1], match) if tap.io == "router" and len(tap.names) > 1 else ""
                if experts_name in routes:
                    hook = _rerouting(experts_name, routes[experts_name], rerouted)
                    stack.callback(module.register_forward_hook(hook, prepend=True).remove)
        yield rerouted


def _rerouting(experts_name: str, tokens: dict[int, tuple[int, ...]], rerouted: Rerouted):
    def rewrite(_module, _args, output):
        if not isinstance(output, (tuple, list)) or len(output) < 3:
            return None
        logits, weights, experts = output[:3]
        routed = reroute(logits, weights, experts, tokens)
        if routed is None:
            return None
        (weights, experts), rule = routed
        rows = experts.numel() // experts.shape[-1]
        rerouted.tokens[experts_name] = sorted(token for token in tokens if token < rows)
        if rule is None:
            rerouted.weights_kept.add(experts_name)
        rewritten = (logits, weights, experts, *output[3:])
        return rewritten if isinstance(output, tuple) else list(rewritten)
    return rewrite


def reroute(logits, weights, experts, tokens: dict[int, tuple[int, ...]]):
    """((weights, experts), rule) with each token of `tokens` sent to its experts; None where the output is not
    (logits (.., E), top-k weights (.., k), top-k ids (.., k)). `rule`: the weight rule found, None if kept."""
    import torch

    if not all(isinstance(t, torch.Tensor) for t in (logits, weights, experts)) \
            or weights.shape != experts.shape or logits.dim() < 1 or weights.dim() < 1 \
            or logits.numel() // max(logits.shape[-1], 1) != weights.numel() // max(weights.shape[-1], 1):
        return None
    width = logits.shape[-1]
    rows_logits = logits.detach().reshape(-1, width).double()                  # (T, E)
    rows_weights = weights.reshape(rows_logits.shape[0], -1)                   # (T, k)
    rows_experts = experts.reshape(rows_logits.shape[0], -1)                   # (T, k)
    rule = weight_rule(rows_logits, rows_weights.detach().double(), rows_experts)
    new_weights, new_experts = rows_weights.clone(), rows_experts.clone()
    for token, chosen in tokens.items():
        if token >= rows_logits.shape[0]:
            continue
        slots = _slots(rows_logits[token], rows_experts[token].tolist(), chosen)
        for slot, expert in slots.items():
            new_experts[token, slot] = expert
        if rule is not None:
            new_weights[token] = rule.weights(rows_logits[token], new_experts[token]).to(weights.dtype)
    return (new_weights.reshape(weights.shape), new_experts.reshape(experts.shape)), rule


def _slots(logits, chosen_here: list[int], chosen_there: tuple[int, ...]) -> dict[int, int]:
    """{slot: expert}: each expert `chosen_there` lacks here takes the slot of one it dropped, the highest
    logit of each set paired first."""
    dropped = sorted((e for e in chosen_here if e not in chosen_there), key=lambda e: -float(logits[e]))
    taken = sorted((e for e in chosen_there if e not in chosen_here), key=lambda e: -float(logits[e]))
    return {chosen_here.index(out): into for out, into in zip(dropped, taken)}


@dataclass(frozen=True)
class WeightRule:
    """Each chosen expert's weight: scale * f(logit) / (the sum of f over every expert, over the chosen, or 1)."""

    function: str     # "exp" or "sigmoid"
    normalised: str   # "all", "chosen" or "none"
    scale: float

    def __repr__(self) -> str:
        return f"<WeightRule {self.function} over {self.normalised} x {self.scale:.4g}>"

    def weights(self, logits, experts):
        """(k,) the weights of `experts` at one token whose router logits are `logits` (E,)."""
        values = _apply(self.function, logits)
        chosen = values[experts]
        total = {"all": values.sum(), "chosen": chosen.sum(), "none": 1.0}[self.normalised]
        return self.scale * chosen / total


def weight_rule(logits, weights, experts) -> WeightRule | None:
    """The rule the router's weights follow at every token of one call; None where none of them fits.
    logits (T, E), weights and experts (T, k), float64 but for the ids."""
    import torch

    for function in ("exp", "sigmoid"):
        values = _apply(function, logits)                                       # (T, E)
        chosen = torch.gather(values, 1, experts.long())                        # (T, k)
        if (chosen <= 0).any():
            continue
        ratio = weights / chosen                                                # (T, k): constant along k
        if not _constant(ratio, dim=1):
            continue
        per_token = ratio[:, 0]                                                 # (T,)
        for normalised, total in (("chosen", chosen.sum(dim=1)), ("all", values.sum(dim=1)),
                                  ("none", torch.ones_like(per_token))):
            scales = per_token * total
            if _constant(scales, dim=0):
                return WeightRule(function, normalised, float(scales.mean()))
    return None


def _apply(function: str, logits):
    import torch

    if function == "exp":
        return torch.exp(logits - logits.max(dim=-1, keepdim=True).values)    # a softmax's numerator, shifted
    return torch.sigmoid(logits)


def _constant(values, dim: int) -> bool:
    reference = values.select(dim, 0).unsqueeze(dim) if values.dim() > 1 else values[:1]
    return bool(((values - reference).abs() <= RULE_RTOL * reference.abs()).all())
