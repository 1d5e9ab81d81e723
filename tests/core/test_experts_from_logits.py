"""A candidate that records its router's logits but not the experts chosen: the experts are taken as the top k of
its logits, only where the reference's own choice is the top k of its logits."""

import numpy as np

from parity.core.experts_from_logits import top_k, with_experts_from_logits
from parity.core.trace import make_trace

LOGITS = np.array([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.7], [0.2, 0.3, 0.6, 0.5]])   # (T=3, E=4)


def reference(chosen=None, metadata=None):
    chosen = top_k(LOGITS, 2) if chosen is None else chosen
    return make_trace({"layers.0.moe_router_logits": LOGITS, "layers.0.moe_experts": chosen}, metadata)


def test_the_top_k_of_the_candidates_logits_where_the_reference_chooses_so():
    candidate_logits = LOGITS.copy()
    candidate_logits[2] = [0.2, 0.7, 0.6, 0.5]          # token 2 chooses otherwise
    candidate = make_trace({"layers.0.moe_router_logits": candidate_logits})
    derived, names = with_experts_from_logits(reference(), candidate)
    assert names == ("layers.0.moe_experts",)
    assert derived["layers.0.moe_experts"].tolist() == [[1, 2], [0, 3], [1, 2]]


def test_not_taken_where_the_reference_chooses_otherwise_than_its_logits_top_k():
    biased = np.array([[1, 2], [0, 3], [0, 2]])          # token 2: not its logits' top 2 (a biased router)
    candidate = make_trace({"layers.0.moe_router_logits": LOGITS})
    assert with_experts_from_logits(reference(biased), candidate)[1] == ()


def test_a_rerouted_reference_is_read_at_the_tokens_it_chose_itself():
    forced = np.array([[1, 2], [0, 3], [0, 2]])          # token 2 sent where the candidate went
    rerouted = reference(forced, {"routed_as_candidate": {"layers.0.moe_experts": {"2": [0, 2]}}})
    candidate = make_trace({"layers.0.moe_router_logits": LOGITS})
    assert with_experts_from_logits(rerouted, candidate)[1] == ("layers.0.moe_experts",)


def test_a_candidate_that_records_its_experts_is_left_as_it_is():
    candidate = make_trace({"layers.0.moe_router_logits": LOGITS, "layers.0.moe_experts": np.array([[0, 1]] * 3)})
    derived, names = with_experts_from_logits(reference(), candidate)
    assert names == () and derived is candidate
