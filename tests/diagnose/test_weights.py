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


def test_weights_rounded_to_bfloat16_are_the_same_weights():
    torch = __import__("pytest").importorskip("torch")
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    rounded = {name: torch.from_numpy(value).to(torch.bfloat16) for name, value in BASE.items()}
    reference, candidate = make_trace(BASE, {"dtype": "float64"}), make_trace(rounded, {"dtype": "bfloat16"})
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    assert "weight_mismatch" not in [d.cause for d in comparison.diagnoses]
    halved = {**rounded, "layers.0.k.weight": rounded["layers.0.k.weight"] * 0.5}
    candidate = make_trace(halved, {"dtype": "bfloat16"})
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    assert ("weight_mismatch", "layers.0.k") in [(d.cause, d.checkpoint) for d in comparison.diagnoses]


def test_a_weight_is_reported_by_row_in_the_verdict():
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.report.console import render

    candidate = {**BASE, "layers.0.q.weight": BASE["layers.0.q.weight"].copy()}
    candidate["layers.0.q.weight"][6] += 1.0
    comparison = compare(make_trace(BASE, {"dtype": "float32"}), make_trace(candidate, {"dtype": "float32"}))
    assert comparison.first_divergence.checkpoint == "layers.0.q.weight"
    text = render(comparison)
    assert "worst at row 6" in text and "worst at token" not in text
