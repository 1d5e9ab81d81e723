"""Routers of transformers' own MoE models made to send one token to other experts: the ids replaced slot for slot,
and the new experts weighted as that router's code would weight them had it chosen them."""

import pytest
import torch
import transformers

from parity.capture.torch.routed import reroute, routed_as, weight_rule
from parity.core.names import Tap

TOKENS, EXPERTS, TOP_K, HIDDEN = 10, 8, 2, 16


def _router(kind: str):
    torch.manual_seed(0)
    if kind.startswith("olmoe"):
        from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter

        config = transformers.OlmoeConfig(hidden_size=HIDDEN, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
                                          norm_topk_prob=kind == "olmoe-normalised")
        router = OlmoeTopKRouter(config)
    elif kind == "gpt_oss":
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

        config = transformers.GptOssConfig(hidden_size=HIDDEN, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)
        router = GptOssTopKRouter(config)
    else:
        from transformers.models.hy_v3.modeling_hy_v3 import HYV3TopKRouter

        config = transformers.HYV3Config(hidden_size=HIDDEN, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)
        router = HYV3TopKRouter(config)
    with torch.no_grad():
        for parameter in router.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return router.double() if kind != "hy_v3" else router   # HY-v3's router computes in float32 whatever it holds


def _run(router, kind: str, hidden):
    return router(hidden, torch.zeros(EXPERTS)) if kind == "hy_v3" else router(hidden)


def _weights_as_the_router_gives(kind: str, logits, experts):
    """What each router's code gives the experts `experts` (k,) at a token with router logits `logits` (E,)."""
    if kind == "olmoe":                  # softmax over every expert, taken as it is
        return torch.softmax(logits, dim=-1)[experts]
    if kind == "olmoe-normalised":       # softmax over every expert, renormalised over the chosen
        chosen = torch.softmax(logits, dim=-1)[experts]
        return chosen / chosen.sum()
    if kind == "gpt_oss":                # softmax over the chosen experts' logits
        return torch.softmax(logits[experts], dim=-1)
    chosen = torch.sigmoid(logits)[experts]   # HY-v3: sigmoid, renormalised, times its scaling factor
    return chosen / chosen.sum() * 2.826


@pytest.mark.parametrize("kind", ["olmoe", "olmoe-normalised", "gpt_oss", "hy_v3"])
def test_a_token_sent_to_other_experts_gets_the_weights_the_routers_own_rule_gives(kind):
    router = _router(kind)
    hidden = torch.randn(TOKENS, HIDDEN, dtype=torch.float64 if kind != "hy_v3" else torch.float32)
    logits, weights, experts = _run(router, kind, hidden)
    token = 3
    ranked = torch.argsort(logits[token], descending=True).tolist()
    other = tuple(sorted(ranked[:TOP_K - 1] + [ranked[TOP_K]]))   # its second choice for its third
    (new_weights, new_experts), rule = reroute(logits, weights, experts, {token: other})
    assert rule is not None, kind
    assert sorted(new_experts[token].tolist()) == list(other)
    assert new_experts[token, experts[token].tolist().index(ranked[0])] == ranked[0]   # the kept expert keeps its slot
    expected = _weights_as_the_router_gives(kind, logits[token].double(), new_experts[token])
    torch.testing.assert_close(new_weights[token].double(), expected, rtol=1e-5, atol=0)
    untouched = [t for t in range(TOKENS) if t != token]
    assert torch.equal(new_experts[untouched], experts[untouched])
    assert torch.equal(new_weights[untouched], weights[untouched])


def test_weights_no_rule_explains_are_kept_from_the_experts_they_replace():
    logits = torch.randn(TOKENS, EXPERTS, dtype=torch.float64)
    experts = torch.topk(logits, TOP_K, dim=-1).indices
    weights = torch.rand(TOKENS, TOP_K, dtype=torch.float64)   # unrelated to the logits
    assert weight_rule(logits, weights, experts) is None
    chosen = experts[0].tolist()
    other = tuple(sorted([chosen[0], next(e for e in range(EXPERTS) if e not in chosen)]))
    (new_weights, new_experts), rule = reroute(logits, weights, experts, {0: other})
    assert rule is None and sorted(new_experts[0].tolist()) == list(other)
    assert torch.equal(new_weights, weights)


def test_a_model_run_routed_sends_only_the_named_tokens_and_records_them():
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    torch.manual_seed(0)
    config = transformers.OlmoeConfig(hidden_size=HIDDEN, intermediate_size=32, num_experts=EXPERTS,
                                      num_experts_per_tok=TOP_K)
    model = torch.nn.ModuleDict({"mlp": OlmoeSparseMoeBlock(config)}).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    hidden = torch.randn(1, TOKENS, HIDDEN, dtype=torch.float64)
    plain = model["mlp"](hidden)
    _, _, chosen = model["mlp"].gate(hidden)
    other = tuple(sorted(set(range(EXPERTS)) - set(chosen[5].tolist())))[:TOP_K]
    taps = [Tap("mlp.gate", ("layers.0.moe_router_logits", "layers.0.moe_experts", "layers.0.moe_weights"), "router")]
    with routed_as(model, taps, {"layers.0.moe_experts": {5: other}}) as rerouted:
        routed = model["mlp"](hidden)
        assert sorted(model["mlp"].gate(hidden)[2][5].tolist()) == list(other)
    assert rerouted.tokens == {"layers.0.moe_experts": [5]} and not rerouted.weights_kept
    differs = (routed - plain).abs().amax(dim=-1)[0]                          # (T,)
    assert differs[5] > 1e-3 and torch.all(differs[torch.arange(TOKENS) != 5] < 1e-12)   # (summed in another order)
    assert torch.equal(model["mlp"](hidden), plain)                           # the hook is gone after
