import numpy as np

from detector_cases import causes, diagnoses, rng

R = rng(1)
BASE = {"embed": R.standard_normal((6, 32)), "layers.0.q": R.standard_normal((6, 32)),
        "layers.0.k": R.standard_normal((6, 32)), "layers.0.attn_probs": R.random((4, 6, 6))}


def with_(**changes):
    return {**BASE, **{name.replace("__", "."): value for name, value in changes.items()}}


def test_token_shift_an_extra_token_at_the_start():
    candidate = with_(embed=np.vstack([R.standard_normal((1, 32)), BASE["embed"]]))
    assert diagnoses(BASE, candidate) == [("token_shift", "embed")]


def test_token_shift_needs_the_shifted_rows_to_match():
    assert "token_shift" not in causes(BASE, with_(embed=R.standard_normal((7, 32))))


def test_layout_permuted_same_shape_axes_transposed():
    candidate = with_(layers__0__attn_probs=BASE["layers.0.attn_probs"].transpose(0, 2, 1).copy())
    assert ("layout_permuted", "layers.0.attn_probs") in diagnoses(BASE, candidate)


def test_layout_permuted_reported_for_an_aligned_layout_that_passes():
    candidate = with_(layers__0__attn_probs=BASE["layers.0.attn_probs"].transpose(1, 0, 2).copy())
    found = diagnoses(BASE, candidate)
    assert ("layout_permuted", "layers.0.attn_probs") in found


def test_swapped_q_and_k():
    candidate = with_(layers__0__q=BASE["layers.0.k"], layers__0__k=BASE["layers.0.q"])
    assert diagnoses(BASE, candidate) == [("swapped", "layers.0.q")]


def test_sign_flip():
    assert diagnoses(BASE, with_(layers__0__k=-BASE["layers.0.k"])) == [("sign_flip", "layers.0.k")]


def test_scale_factor_names_the_factor():
    found = diagnoses(BASE, with_(layers__0__q=BASE["layers.0.q"] * 8 ** 0.5))
    assert found == [("scale_factor", "layers.0.q")]


def test_no_cause_for_unrelated_noise():
    assert causes(BASE, with_(layers__0__q=BASE["layers.0.q"] + 0.3 * R.standard_normal((6, 32)))) == set()


def test_tensors_too_large_to_widen_are_diagnosed_as_read_in_float32(monkeypatch):
    """Above WIDEN_BELOW_ELEMENTS the detectors work on the float32 tensors as read: same causes."""
    import parity.diagnose.context as context

    float32 = {name: value.astype(np.float32) for name, value in BASE.items()}
    cases = [
        {**float32, "embed": np.vstack([R.standard_normal((1, 32)), BASE["embed"]]).astype(np.float32)},
        {**float32, "layers.0.q": float32["layers.0.k"], "layers.0.k": float32["layers.0.q"]},
        {**float32, "layers.0.k": -float32["layers.0.k"]},
        {**float32, "layers.0.q": float32["layers.0.q"] * np.float32(8 ** 0.5)},
        {**float32, "layers.0.attn_probs": float32["layers.0.attn_probs"].transpose(0, 2, 1).copy()},
        {**float32, "layers.0.q": float32["layers.0.q"] + np.float32(0.3) * R.standard_normal((6, 32)).astype(np.float32)},
    ]
    widened = [diagnoses(float32, candidate) for candidate in cases]
    monkeypatch.setattr(context, "WIDEN_BELOW_ELEMENTS", 0)
    assert [diagnoses(float32, candidate) for candidate in cases] == widened
    assert [found[0][0] if found else None for found in widened] == [
        "token_shift", "swapped", "sign_flip", "scale_factor", "layout_permuted", "no_known_cause"]


def _deep_in_a_noisy_run(candidate_of):
    """A calibrated layer whose precision's own error is 1.35% (as deep in a bfloat16 run of a random 7B model), and
    the candidate `candidate_of(reference, its own noise)`: the diagnoses."""
    from parity.core.calibrate import noise_floors
    from parity.core.compare import CompareConfig, compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    draw = np.random.default_rng(7)
    reference = draw.standard_normal((16, 256))
    noise = lambda: 0.0135 * draw.standard_normal(reference.shape)   # noqa: E731
    lowp = make_trace({"layers.2.attn_norm": reference + noise()}, {"dtype": "bfloat16"})
    reference_trace = make_trace({"layers.2.attn_norm": reference}, {})
    config = CompareConfig(noise=noise_floors(reference_trace, lowp), noise_dtype="bfloat16")
    candidate = make_trace({"layers.2.attn_norm": candidate_of(reference, noise())}, {"dtype": "bfloat16"})
    comparison = diagnose(compare(reference_trace, candidate, config=config), reference_trace, candidate)
    assert not comparison.passed
    return comparison.diagnoses


def test_a_wrong_factor_is_named_where_the_precision_noise_it_leaves_is_large():
    """5% too large under 1.35% of noise: the factor leaves a quarter of the error, more than EXPLAINED, but all
    of it within the calibrated tolerance; the noise alone would have passed."""
    found = _deep_in_a_noisy_run(lambda reference, noise: 1.05 * (reference + noise))
    assert [(d.cause, d.checkpoint) for d in found][:1] == [("scale_factor", "layers.2.attn_norm")]
    assert "times 1.05" in found[0].message and found[0].confidence == "confirmed"


def test_noise_alone_four_times_too_large_is_no_factor():
    found = _deep_in_a_noisy_run(lambda reference, noise: reference + 4 * noise)
    assert "scale_factor" not in [d.cause for d in found]


def test_a_pass_names_where_its_widest_bound_would_let_a_bug_through():
    """A calibrated pass says what it cannot rule out: where the precision's own error makes the bound wide (the
    random 7B's bfloat16 run: 3.9% at layer 20, bound 0.12), a smaller bug shows only if a later bound catches it;
    narrow bounds say nothing."""
    from parity.core.calibrate import noise_floors
    from parity.core.compare import CompareConfig, compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    draw = np.random.default_rng(8)
    reference = {"layers.2.out": draw.standard_normal((16, 256)), "layers.20.out": draw.standard_normal((16, 256))}
    reference_trace = make_trace(reference, {})

    def passing_message(noise_at_20: float) -> str:
        noisy = {"layers.2.out": 0.002, "layers.20.out": noise_at_20}
        lowp = make_trace({name: value + noisy[name] * draw.standard_normal(value.shape)
                           for name, value in reference.items()}, {"dtype": "bfloat16"})
        candidate = make_trace({name: value + noisy[name] * draw.standard_normal(value.shape)
                                for name, value in reference.items()}, {"dtype": "bfloat16"})
        config = CompareConfig(noise=noise_floors(reference_trace, lowp), noise_dtype="bfloat16")
        comparison = diagnose(compare(reference_trace, candidate, config=config), reference_trace, candidate)
        assert comparison.passed and [d.cause for d in comparison.diagnoses] == ["precision_noise"]
        return comparison.diagnoses[0].message

    wide = passing_message(0.039)
    assert "the widest bound is at layers.20.out, rel_l2 0.12" in wide and "a bug smaller than that" in wide
    assert "widest bound" not in passing_message(0.004)
