import numpy as np

from parity.core.calibrate import noise_floors
from parity.core.compare import CompareConfig, compare
from parity.core.results import NotChecked
from parity.core.trace import make_trace
from parity.report.console import render

RNG = np.random.default_rng(4)


def trace_with_layers(layers=30):
    tensors = {"embed": RNG.standard_normal((3, 8)), "logits": RNG.standard_normal((3, 8))}
    for i in range(layers):
        for kind in ("attn_norm", "q", "k", "v", "q_rope", "k_rope", "attn_ctx", "attn_out", "resid_mid", "mlp_norm",
                     "mlp_gate", "mlp_up", "mlp_act", "mlp_out", "out"):
            tensors[f"layers.{i}.{kind}"] = RNG.standard_normal((3, 8))
        tensors[f"layers.{i}.attn_probs"] = RNG.random((2, 3, 3))
    return tensors


def test_grid_has_a_row_per_layer_and_fits_100_columns():
    tensors = trace_with_layers()
    candidate = dict(tensors)
    candidate["layers.7.mlp_act"] = tensors["layers.7.mlp_act"] + 1.0
    text = render(compare(make_trace(tensors), make_trace(candidate)), width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    grid_rows = [line for line in lines if line.strip().split(" ")[0].isdigit()]
    assert len(grid_rows) == 30
    row7 = next(line for line in grid_rows if line.split()[0] == "7")
    assert row7.split()[1:15].count("✓") == 13 and "✗" in row7
    assert "FAIL  1/482 checkpoints outside tolerance; first divergence at layers.7.mlp_act" in text
    assert "Mismatched elements: 24 / 24 (100.0%)" in text
    assert "Greatest absolute difference:" in text


def test_pass_line_and_nonfinite_cell():
    tensors = trace_with_layers(2)
    assert "PASS  " in render(compare(make_trace(tensors), make_trace(tensors)))
    candidate = dict(tensors)
    candidate["layers.1.out"] = tensors["layers.1.out"].copy()
    candidate["layers.1.out"][0, 0] = np.inf
    text = render(compare(make_trace(tensors), make_trace(candidate)))
    assert "!" in next(line for line in text.splitlines() if line.strip().startswith("1 "))
    assert "non-finite: candidate 0 NaN, 1 Inf" in text


def test_missing_checkpoints_show_as_absent_and_are_listed():
    tensors = trace_with_layers(2)
    candidate = {k: v for k, v in tensors.items() if not k.endswith("q_rope")}
    text = render(compare(make_trace(tensors), make_trace(candidate)))
    assert "only in reference: layers.0.q_rope, layers.1.q_rope" in text
    assert "·" in next(line for line in text.splitlines() if line.strip().startswith("0 "))


def test_a_calibrated_failure_prints_the_bound_applied_and_a_zero_noise_floor_as_such():
    tensors = trace_with_layers(1)
    candidate = {**tensors, "layers.0.q": tensors["layers.0.q"] * 1.01}
    config = CompareConfig(noise=noise_floors(make_trace(tensors), make_trace(tensors)), noise_dtype="float32")
    text = render(compare(make_trace(tensors), make_trace(candidate), config=config))
    assert "first divergence at layers.0.q" in text
    assert "up to 0 + 0·|ref|" not in text and "Mismatched elements" not in text
    assert "allowed: rel_l2 1e-06, worst position 1e-06 (noise floor 0: exact at this precision); got 0.01" in text
    assert "e+2" not in text and "e+3" not in text   # no ratio to a zero floor


def test_checks_not_run_are_listed_by_reason():
    import dataclasses

    tensors = trace_with_layers(1)
    comparison = dataclasses.replace(compare(make_trace(tensors), make_trace(tensors)), not_checked=(
        NotChecked("decode", "--decode-steps 0"), NotChecked("kv_cache", "--decode-steps 0"),
        NotChecked("replay", "not asked for: --replay reruns each block"),
        NotChecked("weights", "not asked for: --weights compares parameters")))
    text = render(comparison)
    assert "not checked: decode, KV cache: --decode-steps 0" in text
    assert "not checked: replay, weights: not asked for\n" in text


def test_raw_outputs_say_which_ran_otherwise_and_which_selected_other_ids():
    tensors = dict(trace_with_layers(2), **{"raw.model.layers.0.self_attn.indexer": np.arange(9).reshape(3, 3),
                                            "raw.model.layers.1.mlp.experts.act_fn": np.ones((3, 4))})
    candidate = dict(tensors, **{"raw.model.layers.0.self_attn.indexer": np.arange(9)[::-1].reshape(3, 3).copy(),
                                 "raw.model.layers.1.mlp.experts.act_fn": np.ones((6, 4))})
    text = " ".join(render(compare(make_trace(tensors), make_trace(candidate)), width=400).split())
    assert "raw modules (no canonical role): 0 compared, 0 failed; 1 ran with other shapes on the two sides, " \
           "not compared; 1 chose other integer ids (raw.model.layers.0.self_attn.indexer)" in text
