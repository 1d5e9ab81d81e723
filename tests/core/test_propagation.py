import numpy as np

from parity.core.calibrate import noise_floors
from parity.core.compare import CompareConfig, compare
from parity.core.names import inputs_of
from parity.core.trace import make_trace

RNG = np.random.default_rng(6)
NAMES = ["embed", "layers.0.attn_norm", "layers.0.q", "layers.0.k", "layers.0.v", "layers.0.attn_ctx",
         "layers.0.attn_out", "layers.0.resid_mid", "layers.0.mlp_norm", "layers.0.mlp_out", "layers.0.out"]
REFERENCE = {name: RNG.standard_normal((5, 8)) for name in NAMES}


def test_inputs_follow_the_data_flow():
    assert inputs_of("layers.0.attn_norm", NAMES) == ["embed"]
    assert inputs_of("layers.0.resid_mid", NAMES) == ["embed", "layers.0.attn_out"]
    assert inputs_of("layers.3.q_rope", ["layers.3.q", "layers.3.q_norm"]) == ["layers.3.q_norm"]
    assert inputs_of("layers.1.attn_norm", ["layers.0.out"]) == ["layers.0.out"]
    assert inputs_of("logits", ["final_norm"]) == ["final_norm"]
    assert inputs_of("final_norm", ["layers.0.out", "layers.7.out"]) == ["layers.7.out"]
    assert inputs_of("embed", NAMES) == []


def test_the_origin_is_the_op_that_adds_the_error_not_the_first_checkpoint_over_tolerance():
    candidate = dict(REFERENCE)
    # attn_norm: one element off by 1e-3, outside the elementwise bound but a tiny share of the tensor
    candidate["layers.0.attn_norm"] = REFERENCE["layers.0.attn_norm"].copy()
    candidate["layers.0.attn_norm"][2, 3] += 1e-3
    # attn_ctx, whose inputs carry almost no error, adds 5%; everything after inherits it
    for name in NAMES[5:]:
        candidate[name] = REFERENCE[name] * 1.05
    float32 = {"dtype": "float32"}
    comparison = compare(make_trace(REFERENCE, float32), make_trace(candidate, float32))
    assert comparison.first_divergence.checkpoint == "layers.0.attn_norm"
    assert comparison.origin.checkpoint == "layers.0.attn_ctx"
    attribution = comparison.attributions["layers.0.attn_out"]
    assert attribution.introduced_rel_l2 < 1e-9 and abs(attribution.inherited_rel_l2 - 0.05) < 1e-9


def test_noise_gain_from_calibration_discounts_an_amplifying_step():
    lowp = dict(REFERENCE)
    lowp["layers.0.attn_norm"] = REFERENCE["layers.0.attn_norm"] * (1 + 1e-3)
    lowp["layers.0.q"] = REFERENCE["layers.0.q"] * (1 + 1e-2)   # this step amplifies noise 10x
    candidate = dict(lowp)
    config = CompareConfig(noise=noise_floors(make_trace(REFERENCE), make_trace(lowp)))
    comparison = compare(make_trace(REFERENCE), make_trace(candidate), config=config)
    assert abs(comparison.attributions["layers.0.q"].gain - 10.0) < 1e-6
    assert comparison.attributions["layers.0.q"].introduced_rel_l2 < 1e-9
