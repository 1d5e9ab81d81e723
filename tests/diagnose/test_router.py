import numpy as np

from detector_cases import rng
from family_cases import diagnosed

T, EXPERTS, K = 8, 4, 2
LOGITS = rng(8).standard_normal((T, EXPERTS)) * 2.0


def top_k(probabilities):
    return np.sort(np.argsort(-probabilities, axis=-1)[:, :K], axis=-1)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


REFERENCE = {"layers.0.moe_router_logits": LOGITS, "layers.0.moe_experts": top_k(softmax(LOGITS, -1))}


def router_messages(candidate):
    comparison = diagnosed(REFERENCE, candidate, {"layers": [{"moe": True}]})
    return comparison, [d.message for d in comparison.diagnoses if d.cause == "router"]


def test_experts_chosen_from_the_wrong_axis_are_named():
    wrong = top_k(softmax(LOGITS, 0))
    assert not np.array_equal(wrong, REFERENCE["layers.0.moe_experts"])
    comparison, messages = router_messages({**REFERENCE, "layers.0.moe_experts": wrong})
    assert comparison.first_divergence.checkpoint == "layers.0.moe_experts"
    assert messages and "wrong axis" in messages[0] and "router logits agree" in messages[0]


def test_a_router_with_other_logits_is_blamed_on_its_input_or_weights():
    other = -LOGITS
    _, messages = router_messages({"layers.0.moe_router_logits": other, "layers.0.moe_experts": top_k(softmax(other, -1))})
    assert messages and "router logits differ" in messages[0] and "routed to other experts" in messages[0]


def test_another_top_k_is_named():
    _, messages = router_messages({**REFERENCE, "layers.0.moe_experts": np.sort(np.argsort(-LOGITS, -1)[:, :3], -1)})
    assert messages and "3 experts per token" in messages[0]
