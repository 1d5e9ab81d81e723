"""The config settings a port or converter may read otherwise, found from the config's own fields: each one the
change it makes to the config's top-level fields, and nothing tried that the config already says."""

from parity.core.config_settings import settings_to_try


def _by_field(fields: dict) -> dict:
    return {setting.field: setting for setting in settings_to_try(fields)}


def _changed(setting) -> dict:
    return dict(setting.changes)


LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rms_norm_eps": 1e-5,
         "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "hidden_act": "silu"}


def test_a_llama_config_tries_the_base_and_the_epsilon_ports_assume():
    settings = _by_field(LLAMA)
    assert set(settings) == {"rms_norm_eps", "rope_parameters.rope_theta"}
    assert _changed(settings["rms_norm_eps"]) == {"rms_norm_eps": 1e-6}
    assert settings["rms_norm_eps"].cause == "norm_epsilon"
    assert _changed(settings["rope_parameters.rope_theta"]) == {
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    assert settings["rope_parameters.rope_theta"].cause == "rope_theta"
    assert "where the config says 100000" in settings["rope_parameters.rope_theta"].text


def test_nothing_is_tried_that_the_config_already_says():
    plain = {**LLAMA, "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    assert [setting.changes for setting in settings_to_try(plain)] == [(("rms_norm_eps", 1e-5),)]
    assert settings_to_try({"model_type": "opt", "do_layer_norm_before": True, "use_cache": True}) == ()


def test_rope_scaling_is_left_out_keeping_the_base():
    scaled = {**LLAMA, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}}
    setting = _by_field(scaled)["rope_parameters.rope_type"]
    assert _changed(setting) == {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    assert setting.cause == "rope_scaling"
    legacy = {"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}, "hidden_size": 64}
    assert {setting.field: _changed(setting) for setting in settings_to_try(legacy)} == {
        "rope_theta": {"rope_theta": 10000.0}, "rope_scaling": {"rope_scaling": None}}


def test_one_set_of_rope_parameters_per_layer_type_is_changed_alone():
    fields = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    [setting] = settings_to_try(fields)
    assert setting.field == "rope_parameters.full_attention.rope_theta"
    assert _changed(setting)["rope_parameters"] == {"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}


def test_a_sliding_window_is_left_out_or_one_key_off():
    gemma2 = {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"],
              "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 256,
              "query_pre_attn_scalar": 224, "hidden_activation": "gelu_pytorch_tanh"}
    settings = settings_to_try(gemma2)
    changes = [_changed(setting) for setting in settings]
    assert {"layer_types": ["full_attention", "full_attention"]} in changes
    assert {"sliding_window": 3} in changes and {"sliding_window": 5} in changes
    assert {"final_logit_softcapping": None} in changes and {"attn_logit_softcapping": None} in changes
    assert {"query_pre_attn_scalar": 256} in changes            # scaled by the head size
    assert {"hidden_activation": "gelu"} in changes
    mistral = {"sliding_window": 4096}
    assert [_changed(setting) for setting in settings_to_try(mistral)][0] == {"sliding_window": None}
    unused = {"sliding_window": 4096, "use_sliding_window": False}   # Qwen2's: declared, not applied
    assert settings_to_try(unused) == ()


def test_granite_multipliers_are_each_left_at_what_a_plain_model_uses():
    granite = {"hidden_size": 64, "num_attention_heads": 4, "embedding_multiplier": 12.0, "residual_multiplier": 0.25,
               "logits_scaling": 4.0, "attention_multiplier": 0.2}
    settings = _by_field(granite)
    assert _changed(settings["attention_multiplier"]) == {"attention_multiplier": 0.25}   # 1/sqrt(16)
    assert settings["attention_multiplier"].cause == "attention_scale"
    assert all(_changed(settings[field]) == {field: 1.0}
               for field in ("embedding_multiplier", "residual_multiplier", "logits_scaling"))


def test_flags_and_missing_values_are_not_read_as_numbers():
    fields = {"rms_norm_eps": True, "final_logit_softcapping": None, "layer_norm_eps": float("nan"),
              "sliding_window": None, "rope_theta": False}
    assert settings_to_try(fields) == ()
