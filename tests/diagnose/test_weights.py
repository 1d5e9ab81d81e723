from detector_cases import diagnoses, rng

R = rng(9)
BASE = {"layers.0.q": R.standard_normal((5, 8)), "layers.0.q.weight": R.standard_normal((8, 16)),
        "layers.0.k": R.standard_normal((5, 8)), "layers.0.k.weight": R.standard_normal((8, 16))}


def test_a_transposed_weight_is_named():
    candidate = {**BASE, "layers.0.k.weight": BASE["layers.0.k.weight"].T.copy(), "layers.0.k": R.standard_normal((5, 8))}
    found = [d for d in diagnoses(BASE, candidate) if d[0] == "weight_mismatch"]
    assert found == [("weight_mismatch", "layers.0.k")]


def test_matching_weights_say_nothing():
    candidate = {**BASE, "layers.0.k": R.standard_normal((5, 8))}
    assert "weight_mismatch" not in {cause for cause, _ in diagnoses(BASE, candidate)}
