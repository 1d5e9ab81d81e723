"""A PyTorch port nobody here wrote: LitGPT's GPT (`litgpt.model.GPT`) with the weights converted by LitGPT's own
`copy_weights_hf_llama`, as a LitGPT user loads a transformers checkpoint. No `parity_taps`: its blocks sit at
`transformer.h.{i}` as nanoGPT's do, with its own names inside (a fused qkv, norm_1, norm_2, fc_1, fc_2, proj),
found by their names. Its optional `input_pos` selects a KV cache that exists only after `set_kv_cache`."""

import pytest

from test_published_ports import check, factory_file, reasons

FACTORIES = '''import json
from pathlib import Path

from safetensors.torch import load_file
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.scripts.convert_hf_checkpoint import copy_weights_hf_llama


def built(path, rope_base=None):
    cfg = json.loads((Path(path) / "config.json").read_text())
    config = Config(name="port", block_size=cfg["max_position_embeddings"], vocab_size=cfg["vocab_size"],
                    padded_vocab_size=cfg["vocab_size"], n_layer=cfg["num_hidden_layers"],
                    n_head=cfg["num_attention_heads"], n_embd=cfg["hidden_size"],
                    n_query_groups=cfg["num_key_value_heads"], head_size=cfg.get("head_dim"),
                    rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
                    norm_eps=cfg["rms_norm_eps"], mlp_class_name="LLaMAMLP",
                    intermediate_size=cfg["intermediate_size"],
                    rope_base=rope_base or int(cfg["rope_parameters"]["rope_theta"]))
    weights = load_file(str(Path(path) / "model.safetensors"))
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    state = {}
    copy_weights_hf_llama(config, {}, state, weights)
    model = GPT(config)
    model.load_state_dict(state)
    return model.eval()


def cached(path):
    model = built(path)
    model.set_kv_cache(batch_size=1)
    return model


def uncached(path):
    return built(path)


def base_500000_cached(path):
    model = built(path, rope_base=500000)   # Llama 3's base where the checkpoint's is 10000
    model.set_kv_cache(batch_size=1)
    return model
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return factory_file(tmp_path_factory, "litgpt", "litgpt_ports", FACTORIES)


def test_litgpts_gpt_passes_and_decodes_through_the_cache_it_sets_up(model_dirs, factories):
    """Before: taken for nanoGPT (its blocks at transformer.h), then refused (input_pos without a cache)."""
    code, report = check(model_dirs["llama"], factories, "cached")
    assert code == 0, report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"embed", "layers.1.attn_norm", "layers.1.q", "layers.1.k", "layers.1.v", "layers.1.attn_out",
            "layers.1.mlp_gate", "layers.1.mlp_up", "layers.1.out", "final_norm", "logits"} <= compared
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5


def test_without_its_cache_set_up_decoding_is_not_checked_with_the_reason(model_dirs, factories):
    code, report = check(model_dirs["llama"], factories, "uncached")
    assert code == 0, report["first_divergence"]
    not_checked = reasons(report)
    assert "You need to call `gpt.set_kv_cache()`" in not_checked["decode"], report["not_checked"]


def test_another_rope_base_is_named_from_the_attention(model_dirs, factories):
    code, report = check(model_dirs["llama"], factories, "base_500000_cached")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_ctx"
    diagnosis = report["diagnoses"][0]
    assert diagnosis["cause"] == "rope_theta" and "theta 5e+05 where the reference uses theta 1e+04" in \
        diagnosis["message"], report["diagnoses"]
