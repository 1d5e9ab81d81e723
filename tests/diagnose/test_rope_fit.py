"""RoPE fitted as parameters (rope_fit.py, rope.py): the config's frequencies for every rope type, each
parameter recovered with the fitted value beside the config's, repairs confirmed, and no change read
into a correct port's rotation."""

import math

import numpy as np
import pytest

from detector_cases import rng
from family_cases import diagnosed
from parity.diagnose.context import ModelConfig
from parity.diagnose.rope_fit import Rotation, Tables, fit, frequencies, rope_parameters

R = rng(23)
T, HEADS, HEAD_DIM = 12, 4, 16
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
TYPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": LLAMA3,
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
                 "short_factor": list(1 + 0.1 * np.arange(8)), "long_factor": list(2 + 0.1 * np.arange(8))},
}


@pytest.mark.parametrize("kind", TYPES)
def test_the_frequencies_are_transformers_own_for_every_rope_type(kind):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=HEAD_DIM,
                                      max_position_embeddings=64, rope_parameters=dict(TYPES[kind]))
    if kind == "default":
        expected = 1.0 / 10000.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM), 1.0
    else:
        inverse, factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=T) if kind in ("dynamic", "longrope") \
            else ROPE_INIT_FUNCTIONS[kind](config, "cpu")
        expected = inverse.numpy(), factor
    found = frequencies(config.rope_parameters, head_dim=HEAD_DIM, dim=HEAD_DIM, max_positions=64, tokens=T)
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-5)
    assert math.isclose(found[1], expected[1], rel_tol=1e-6)


def rotation(parameters, **changes):
    table = Tables(parameters, HEAD_DIM, HEAD_DIM, 64, T).make()
    return Rotation(table, **{"gain": table.gain, **changes})


def fitted(parameters, candidate_rotation):
    x = R.standard_normal((T, HEADS * HEAD_DIM))
    y = candidate_rotation.apply(x, HEAD_DIM, HEAD_DIM)
    tables = Tables(parameters, HEAD_DIM, HEAD_DIM, 64, T)
    return fit(x, y, HEAD_DIM, HEAD_DIM, tables.all(), 1e-9, tables)


@pytest.mark.parametrize("kind", ["default", "linear", "llama3", "yarn"])
def test_each_parameter_is_recovered_under_every_scaling(kind):
    parameters = TYPES[kind]
    for changes, expected in (({"direction": -1}, {"direction"}), ({"offset": 3}, {"offset"}),
                              ({"layout": "adjacent"}, set())):
        found, left = fitted(parameters, rotation(parameters, **changes))
        assert found.changes == expected and left < 1e-9
        assert (found.direction, found.offset, found.layout) == (changes.get("direction", 1), changes.get("offset", 0),
                                                                 changes.get("layout", "half"))
    theta = Tables({**parameters, "rope_theta": 1234.0}, HEAD_DIM, HEAD_DIM, 64, T).make()
    found, _ = fitted(parameters, Rotation(theta, gain=theta.gain))
    assert found.changes == {"theta"} and abs(found.table.parameters["rope_theta"] / 1234.0 - 1) < 0.01


def test_a_scaling_factor_and_an_attention_factor_are_recovered():
    scaled = Tables({**LLAMA3, "factor": 4.0}, HEAD_DIM, HEAD_DIM, 64, T).make()
    found, _ = fitted(LLAMA3, Rotation(scaled))
    assert found.changes == {"scaling"} and abs(found.table.parameters["factor"] - 4.0) < 0.05
    yarn = TYPES["yarn"]
    table = Tables(yarn, HEAD_DIM, HEAD_DIM, 64, T).make()
    found, _ = fitted(yarn, Rotation(table, gain=1.0))     # the attention factor (1.139) left out
    assert found.changes == {"gain"} and table.gain > 1.1


def traces(parameters, candidate_rotation, config_rope=None):
    x = R.standard_normal((T, HEADS * HEAD_DIM))
    reference = {"layers.0.q": x, "layers.0.q_rope": rotation(parameters).apply(x, HEAD_DIM, HEAD_DIM)}
    candidate = {**reference, "layers.0.q_rope": candidate_rotation.apply(x, HEAD_DIM, HEAD_DIM)}
    return reference, candidate


def rope_diagnoses(parameters, candidate_rotation):
    reference, candidate = traces(parameters, candidate_rotation)
    config = {"model_type": "llama", "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "hidden_size": 64,
              "head_dim": HEAD_DIM, "rms_norm_eps": 1e-6, "max_position_embeddings": 64, "rope_parameters": parameters}
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    reference_trace = make_trace(reference, {"dtype": "float32", "config": config})
    candidate_trace = make_trace(candidate, {"dtype": "float32"})
    return diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace).diagnoses


@pytest.mark.parametrize("kind", ["linear", "dynamic", "llama3", "yarn"])
def test_rope_causes_are_named_under_every_scaling_type(kind):
    parameters = TYPES[kind]
    found = rope_diagnoses(parameters, rotation(parameters, direction=-1))
    assert [(d.cause, d.confidence) for d in found] == [("rope_direction", "confirmed")]
    other = Tables({**parameters, "rope_theta": 1e6}, HEAD_DIM, HEAD_DIM, 64, T).make()
    found = rope_diagnoses(parameters, Rotation(other, gain=other.gain))
    assert [d.cause for d in found] == ["rope_theta"]
    assert f"1e+06 where the config's is {parameters['rope_theta']:.4g}" in found[0].message


def test_the_fitted_values_are_printed_beside_the_config():
    scaled = Tables({**LLAMA3, "factor": 4.0}, HEAD_DIM, HEAD_DIM, 64, T).make()
    (diagnosis,) = rope_diagnoses(LLAMA3, Rotation(scaled, offset=0))
    assert diagnosis.cause == "rope_scaling"
    assert "llama3 scaling x4" in diagnosis.message and "llama3 scaling x8" in diagnosis.message
    assert "confirmed: turning the candidate's tensor back" in diagnosis.message


def test_cos_and_sin_exchanged_is_one_constant_phase():
    (diagnosis,) = rope_diagnoses(TYPES["default"], rotation(TYPES["default"], direction=-1, phase=math.pi / 2))
    assert diagnosis.cause == "rope_angles" and "cos and sin are exchanged" in diagnosis.message


def test_positions_are_fitted_token_by_token():
    parameters = TYPES["default"]
    x = R.standard_normal((T, HEADS * HEAD_DIM))
    positions = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7])     # a position counter reset mid-prompt
    table = rotation(parameters).table
    z = x.reshape(T, HEADS, HEAD_DIM)
    turn = np.exp(1j * positions[:, None] * table.frequencies[None, :])[:, None, :]
    pairs = (z[..., :8] + 1j * z[..., 8:]) * turn
    y = np.concatenate([pairs.real, pairs.imag], axis=-1).reshape(T, -1)
    reference = {"layers.0.q": x, "layers.0.q_rope": rotation(parameters).apply(x, HEAD_DIM, HEAD_DIM)}
    config = {"model_type": "llama", "num_attention_heads": HEADS, "hidden_size": 64, "head_dim": HEAD_DIM,
              "rope_parameters": parameters}
    from detector_cases import diagnoses

    assert diagnoses(reference, {**reference, "layers.0.q_rope": y}, config) == [("rope_position_offset", "layers.0.q_rope")]


def test_rope_parameters_per_layer_type():
    config = ModelConfig(head_dim=16, raw={"model_type": "gemma3_text", "layer_types": ["sliding_attention", "full_attention"],
                                          "rope_parameters": {"sliding_attention": {"rope_theta": 1e4},
                                                              "full_attention": {"rope_theta": 1e6}}})
    assert rope_parameters(config, 0)["rope_theta"] == 1e4 and rope_parameters(config, 1)["rope_theta"] == 1e6
    assert rope_parameters(ModelConfig(head_dim=16, raw={"model_type": "gpt2"}), 0) is None


def test_other_values_rotated_right_are_no_rope_cause():
    parameters = TYPES["llama3"]
    x, other = R.standard_normal((T, HEADS * HEAD_DIM)), R.standard_normal((T, HEADS * HEAD_DIM))
    reference = {"layers.0.q": x, "layers.0.q_rope": rotation(parameters).apply(x, HEAD_DIM, HEAD_DIM)}
    candidate = {**reference, "layers.0.q_rope": rotation(parameters).apply(other, HEAD_DIM, HEAD_DIM)}
    found = {d.cause for d in diagnosed(reference, candidate, {}).diagnoses}
    assert not {c for c in found if c.startswith("rope")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["llama3", "yarn", "linear", "qwen3", "gemma3", "mistral"])
def test_a_correct_port_rotates_as_its_config_says(family, dtype):
    """Every q_rope and k_rope of a correct port, fitted from its own q and k, changes no parameter."""
    pytest.importorskip("transformers")
    from planted_bugs import families
    from parity.diagnose.context import model_config
    from parity.diagnose.rope_fit import noise_floor, rotary_dim

    reference, candidate, _ = families().compared(family, dtype=dtype)
    config = model_config(reference)
    for layer in range(config.layers):
        parameters = rope_parameters(config, layer)
        tables = Tables(parameters, config.head_dim, rotary_dim(config, layer, parameters),
                        config.raw.get("max_position_embeddings"), T - 2)
        for kind in ("q", "k"):
            source = f"layers.{layer}.{kind}_norm" if f"layers.{layer}.{kind}_norm" in candidate else f"layers.{layer}.{kind}"
            x, y = (candidate[name].astype(np.float64) for name in (source, f"layers.{layer}.{kind}_rope"))
            found, left = fit(x, y, config.head_dim, tables.dim, tables.all(), noise_floor(dtype), tables)
            assert not found.changes and found.layout == "half", (layer, kind, found)
            assert left <= noise_floor(dtype)


def test_llama3s_low_and_high_factors_exchanged_are_a_table_tried_and_described():
    from parity.diagnose.rope_fit import describe_parameters

    config = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 2048}
    tables = Tables(config, 64, 64, 8192, 10).all()
    exchanged = [table for table in tables if table.parameters["low_freq_factor"] == 4.0]
    assert len(exchanged) == 1 and exchanged[0].changes == {"scaling"}
    assert not np.allclose(exchanged[0].frequencies, tables[0].frequencies)
    assert describe_parameters(exchanged[0].parameters, config) == (
        "theta 5e+05, llama3 scaling x8 (low_freq_factor 4 for 1, high_freq_factor 1 for 4)")


@pytest.mark.parametrize("kind", ["llama3", "yarn"])
def test_another_original_context_is_a_table_tried_and_described(kind):
    """A port built with another original context (LLMs-from-scratch's Llama 3.2 config keeps 8192 whatever the
    checkpoint's is): one table per context tried, named by what changed; "no scaling" said where the config
    scales."""
    from parity.diagnose.rope_fit import describe_parameters

    config = {"rope_type": kind, "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 32,
              **({"low_freq_factor": 1.0, "high_freq_factor": 4.0} if kind == "llama3" else {})}
    tables = Tables(config, 16, 16, 512, 10).all()
    other = [table for table in tables if table.parameters["original_max_position_embeddings"] == 8192]
    assert len(other) == 1 and other[0].changes == {"scaling"}
    assert not np.allclose(other[0].frequencies, tables[0].frequencies)
    assert describe_parameters(other[0].parameters, config) == (
        f"theta 5e+05, {kind} scaling x8 (original_max_position_embeddings 8192 for 32)")
    unscaled = next(table for table in tables if table.parameters["rope_type"] == "default")
    assert describe_parameters(unscaled.parameters, config) == "theta 5e+05, no scaling"
