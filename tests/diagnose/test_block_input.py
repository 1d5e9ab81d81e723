import numpy as np

from detector_cases import diagnoses, rng
from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose

R = rng(7)
T, WIDTH = 8, 16
GPT2 = {"model_type": "gpt2", "n_head": 4, "n_embd": WIDTH, "layer_norm_epsilon": 1e-5}
TABLE = 0.25 * R.standard_normal((T + 4, WIDTH))   # learned position rows
TOKENS = R.standard_normal((T, WIDTH))            # the token embeddings of the prompt


def reference():
    return {"pos_embed": TABLE[:T], "embed": TOKENS + TABLE[:T]}


def test_position_rows_read_one_off():
    candidate = {"pos_embed": TABLE[1:T + 1], "embed": TOKENS + TABLE[1:T + 1]}
    assert diagnoses(reference(), candidate, GPT2) == [("position_embedding", "pos_embed")]


def test_position_embeddings_left_out_seen_in_the_sum():
    assert diagnoses(reference(), {"embed": TOKENS}, GPT2) == [("position_embedding", "embed")]


def test_position_embeddings_added_twice_seen_in_the_sum():
    base = reference()
    assert diagnoses(base, {"embed": TOKENS + 2 * TABLE[:T]}, GPT2) == [("position_embedding", "embed")]


def test_position_embeddings_shifted_seen_in_the_sum():
    base = reference()
    assert diagnoses(base, {"embed": TOKENS + TABLE[2:T + 2]}, GPT2) == [("position_embedding", "embed")]


def test_token_shift_from_the_token_ids():
    base = reference()
    reference_trace = make_trace(base, {"dtype": "float32", "config": GPT2, "tokens": list(range(3, 3 + T))})
    candidate_trace = make_trace({"embed": TOKENS + 0.3}, {"dtype": "float32", "tokens": [0] + list(range(3, 2 + T))})
    comparison = diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)
    found = [d for d in comparison.diagnoses if d.cause == "token_shift"]
    assert found and "[0] prepended" in found[0].message


def test_a_position_table_run_over_more_positions_is_a_token_shift():
    candidate = {"pos_embed": TABLE[:T + 1], "embed": np.concatenate([TOKENS[:1], TOKENS]) + TABLE[:T + 1]}
    assert ("token_shift", "pos_embed") in diagnoses(reference(), candidate, GPT2)
