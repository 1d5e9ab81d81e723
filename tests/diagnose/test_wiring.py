"""wiring (wiring.py): an op that reads the wrong tensor, found by putting other tensors in its place."""

import numpy as np

from detector_cases import CONFIG, diagnoses, rng
from parity.diagnose.layers import ACTIVATIONS

R = rng(41)
T, WIDTH, FF = 8, 32, 48
SILU = ACTIVATIONS["silu"]
WEIGHTS = [1 + 0.2 * R.standard_normal(WIDTH) for _ in range(3)]


def rms_norm(x, weight, eps=1e-6):
    return weight * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def messages(reference, candidate):
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    reference_trace = make_trace(reference, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace(candidate, {"dtype": "float32"})
    found = diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace).diagnoses
    return {(d.cause, d.checkpoint): d.message for d in found}


def test_the_gated_product_with_its_operands_exchanged():
    gate, up = R.standard_normal((T, FF)), R.standard_normal((T, FF))
    base = {"layers.0.mlp_gate": gate, "layers.0.mlp_up": up, "layers.0.mlp_act": SILU(gate) * up}
    found = messages(base, {**base, "layers.0.mlp_act": SILU(up) * gate})
    assert list(found) == [("wiring", "layers.0.mlp_act")]
    assert "gate and up operands are exchanged" in found["wiring", "layers.0.mlp_act"]


def test_the_residual_added_to_the_normed_input():
    x, attn_out = 0.05 * R.standard_normal((T, WIDTH)), R.standard_normal((T, WIDTH))
    normed = rms_norm(x, WEIGHTS[0])
    base = {"embed": x, "layers.0.attn_norm": normed, "layers.0.attn_out": attn_out, "layers.0.resid_mid": x + attn_out}
    found = messages(base, {**base, "layers.0.resid_mid": normed + attn_out})
    assert list(found) == [("wiring", "layers.0.resid_mid")]
    assert "reads layers.0.attn_norm where the model reads embed" in found["wiring", "layers.0.resid_mid"]


EMBED = 0.05 * R.standard_normal((T, WIDTH))
BRANCHES = [R.standard_normal((T, WIDTH)) for _ in range(3)]


def stack(order):
    """embed and three blocks whose output is input + a fixed branch; the blocks run in `order`."""
    x, branches = EMBED, BRANCHES
    tensors, state = {"embed": x}, x
    for layer in order:
        tensors.setdefault(f"layers.{layer}.attn_norm", rms_norm(state, WEIGHTS[layer]))
        state = state + branches[layer]
        tensors.setdefault(f"layers.{layer}.out", state)
    return tensors


def test_blocks_out_of_order():
    found = messages(stack([0, 1, 2]), stack([1, 0, 2]))
    assert ("wiring", "layers.0.attn_norm") in found
    assert "reads the output of layer 1, a later layer: the blocks run out of order" in found["wiring", "layers.0.attn_norm"]


def test_a_layer_run_twice_normalizes_an_unrecorded_tensor():
    found = messages(stack([0, 1, 2]), stack([0, 1, 1, 2]))
    assert list(found) == [("wiring", "layers.2.attn_norm")]
    assert "a block run twice" in found["wiring", "layers.2.attn_norm"]


def test_a_norm_whose_input_the_candidate_does_not_show_is_not_said_to_normalize_another_tensor():
    """The same run-twice candidate with layer 1's output not recorded (a graph that does not hold it): the
    reference's stands in for the input, so a tensor made in between cannot be told from an input that differs
    upstream (a quantized projection's rounding): no such claim."""
    candidate = stack([0, 1, 1, 2])
    del candidate["layers.1.out"]
    found = messages(stack([0, 1, 2]), candidate)
    assert not any("a block run twice" in message for message in found.values()), found


def test_another_epsilon_is_not_an_unrecorded_input():
    base = stack([0, 1, 2])
    candidate = {**base, "layers.1.attn_norm": rms_norm(base["layers.0.out"], WEIGHTS[1], eps=0.0)}
    assert "wiring" not in {cause for cause, _ in diagnoses(base, candidate)}


def test_a_norm_scaled_by_another_layer_s_weight():
    base = stack([0, 1, 2])
    candidate = {**base, "layers.2.attn_norm": rms_norm(base["layers.1.out"], WEIGHTS[0])}
    found = messages(base, candidate)
    assert "scales by the weight of layers.0.attn_norm" in found["wiring", "layers.2.attn_norm"]


VOCAB = 40
HEAD = R.standard_normal((VOCAB, WIDTH))


def head_case():
    """Two blocks' norms and a final norm, with the head's weight recorded on both sides."""
    norms = {name: rms_norm(R.standard_normal((T, WIDTH)), WEIGHTS[0])
             for name in ("layers.0.mlp_norm", "layers.1.attn_norm", "final_norm")}
    return {**norms, "logits": norms["final_norm"] @ HEAD.T, "logits.weight": HEAD}


def test_the_head_applied_to_a_layers_norm():
    base = head_case()
    found = messages(base, {**base, "logits": base["layers.0.mlp_norm"] @ HEAD.T})
    assert list(found) == [("wiring", "logits")]
    assert "break logits = final_norm @ logits.weight^T" in found["wiring", "logits"]
    assert "reads layers.0.mlp_norm where the model reads final_norm" in found["wiring", "logits"]


def test_a_linear_op_applied_to_its_input_is_not_rewired():
    base = head_case()
    wrong = 1.01 * HEAD   # the op reads its own input, with another weight: not a wire
    found = messages(base, {**base, "logits": base["final_norm"] @ wrong.T})
    assert ("wiring", "logits") not in found


def test_q_of_the_block_input_not_its_norm():
    x = R.standard_normal((T, WIDTH))
    weight, bias = R.standard_normal((WIDTH, WIDTH)), R.standard_normal(WIDTH)
    normed = rms_norm(x, WEIGHTS[1])
    base = {"embed": x, "layers.0.attn_norm": normed, "layers.0.q": normed @ weight.T + bias,
            "layers.0.q.weight": weight, "layers.0.q.bias": bias}
    found = messages(base, {**base, "layers.0.q": x @ weight.T + bias})
    assert "reads embed where the model reads layers.0.attn_norm" in found["wiring", "layers.0.q"]


def test_a_linear_identity_only_where_the_op_is_one_linear_map():
    from parity.core.trace import make_trace
    from parity.diagnose.context import Context
    from parity.diagnose.identities import identities

    base = head_case()
    capped = {**base, "lm_head_out": base["logits"], "logits": 30 * np.tanh(base["logits"] / 30)}
    moe = {"layers.0.mlp_act": R.standard_normal((T, FF)), "layers.0.mlp_out": R.standard_normal((T, WIDTH)),
           "layers.0.mlp_out.weight": R.standard_normal((WIDTH, FF)), "layers.0.moe_router_logits": np.ones((T, 4))}
    for tensors, name, expected in ((base, "logits", 1), (capped, "logits", 0), (moe, "layers.0.mlp_out", 0),
                                    ({k: v for k, v in base.items() if k != "logits.weight"}, "logits", 0)):
        trace = make_trace(tensors, {"dtype": "float32", "config": CONFIG})
        assert len([i for i in identities(Context(None, trace, trace), name) if i.kind == "linear"]) == expected
