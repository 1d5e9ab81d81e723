import numpy as np

from detector_cases import diagnoses, rng
from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose

R = rng(11)
T, WIDTH, VOCAB = 6, 32, 40
GAMMA, BETA = 1 + 0.2 * R.standard_normal(WIDTH), 0.1 * R.standard_normal(WIDTH)
GPT2 = {"model_type": "gpt2", "n_head": 4, "n_embd": WIDTH, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}


def layer_norm(x, gamma=GAMMA, beta=BETA):
    centred = x - x.mean(-1, keepdims=True)
    return gamma * centred / np.sqrt(np.mean(centred**2, -1, keepdims=True) + 1e-5) + beta


def rms_norm(x, gamma=GAMMA):
    return gamma * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6)


def test_a_norm_left_out_equals_its_input():
    x, attn_out = R.standard_normal((T, WIDTH)), R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_out": attn_out, "layers.0.resid_mid": x + attn_out,
            "layers.0.mlp_norm": layer_norm(x + attn_out)}
    assert diagnoses(base, {**base, "layers.0.mlp_norm": x + attn_out}, GPT2) == [("op_skipped", "layers.0.mlp_norm")]


def test_a_block_left_out_equals_an_earlier_checkpoint():
    outs = [R.standard_normal((T, WIDTH)) for _ in range(3)]
    base = {"embed": R.standard_normal((T, WIDTH)), **{f"layers.{i}.out": out for i, out in enumerate(outs)}}
    found = diagnoses(base, {**base, "layers.1.out": outs[0], "layers.2.out": outs[0]}, GPT2)
    assert ("op_skipped", "layers.1.out") in found


def test_a_layer_norm_that_ignores_its_weight():
    x = R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": layer_norm(x)}
    candidate = {**base, "layers.0.attn_norm": layer_norm(x, gamma=np.ones(WIDTH))}
    assert diagnoses(base, candidate, GPT2) == [("norm_affine", "layers.0.attn_norm")]


def test_a_layer_norm_that_ignores_its_bias():
    x = R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": layer_norm(x)}
    candidate = {**base, "layers.0.attn_norm": layer_norm(x, beta=np.zeros(WIDTH))}
    found = diagnoses(base, candidate, GPT2)
    assert found == [("norm_affine", "layers.0.attn_norm")]


def test_a_final_rms_norm_that_ignores_its_weight():
    x = R.standard_normal((T, WIDTH))
    base = {"layers.0.out": x, "final_norm": rms_norm(x)}
    assert diagnoses(base, {**base, "final_norm": rms_norm(x, np.ones(WIDTH))}) == [("norm_affine", "final_norm")]


def test_logits_from_another_weight_while_the_final_norm_passes():
    hidden, weight = R.standard_normal((T, WIDTH)), R.standard_normal((VOCAB, WIDTH))
    base = {"final_norm": hidden, "logits": hidden @ weight.T}
    candidate = {**base, "logits": hidden @ R.standard_normal((VOCAB, WIDTH)).T}
    reference_trace = make_trace(base, {"dtype": "float32", "config": GPT2})
    candidate_trace = make_trace(candidate, {"dtype": "float32"})
    comparison = diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)
    found = [d for d in comparison.diagnoses if d.cause == "output_projection"]
    assert [(d.cause, d.checkpoint) for d in comparison.diagnoses] == [("output_projection", "logits")]
    assert "unrelated" in found[0].message and "ties lm_head" in found[0].message


def test_logits_of_the_last_position_only_are_compared_with_the_last_row():
    hidden, weight = R.standard_normal((T, WIDTH)), R.standard_normal((VOCAB, WIDTH))
    base = {"final_norm": hidden, "logits": hidden @ weight.T}
    right = diagnoses(base, {**base, "logits": base["logits"][-1:]}, GPT2)
    assert "output_projection" not in {cause for cause, _ in right}
    wrong = diagnoses(base, {**base, "logits": hidden[-1:] @ R.standard_normal((VOCAB, WIDTH)).T}, GPT2)
    assert wrong == [("output_projection", "logits")]
