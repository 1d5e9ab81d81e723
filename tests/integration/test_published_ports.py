"""A port nobody here wrote, as published: the Qwen3 of LLMs-from-scratch (PyPI `llms-from-scratch`, its
module names, per-head tensors (B, H, T, hd), bfloat16 by default), loaded with a tiny Qwen3's weights
by the package's own load_weights_into_qwen, and its KV-cache variant, a forward that fills a cache
object it is given and returns its logits alone."""

import json

import pytest

from conftest import need
from test_cli import TOKEN_ARG, parity

FACTORIES = '''import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from llms_from_scratch.qwen3 import Qwen3Model, load_weights_into_qwen
from llms_from_scratch.kv_cache import qwen3 as cached_qwen3
from llms_from_scratch.kv_cache.utils import KVCache

TAPS = {
    "tok_emb": "embed",
    "trf_blocks.{i}.norm1": "layers.{i}.attn_norm",
    "trf_blocks.{i}.att.W_query": "layers.{i}.q",
    "trf_blocks.{i}.att.W_key": "layers.{i}.k",
    "trf_blocks.{i}.att.W_value": "layers.{i}.v",
    "trf_blocks.{i}.att.q_norm": "layers.{i}.q_norm",
    "trf_blocks.{i}.att.k_norm": "layers.{i}.k_norm",
    "trf_blocks.{i}.att.out_proj:input": "layers.{i}.attn_ctx",
    "trf_blocks.{i}.att.out_proj": "layers.{i}.attn_out",
    "trf_blocks.{i}.norm2:input": "layers.{i}.resid_mid",
    "trf_blocks.{i}.norm2": "layers.{i}.mlp_norm",
    "trf_blocks.{i}.ff.fc1": "layers.{i}.mlp_gate",
    "trf_blocks.{i}.ff.fc2": "layers.{i}.mlp_up",
    "trf_blocks.{i}.ff.fc3:input": "layers.{i}.mlp_act",
    "trf_blocks.{i}.ff.fc3": "layers.{i}.mlp_out",
    "trf_blocks.{i}": "layers.{i}.out",
    "final_norm": "final_norm",
    "out_head": "logits",
}


def settings(path, dtype):
    hf = json.loads((Path(path) / "config.json").read_text())
    return {"vocab_size": hf["vocab_size"], "context_length": hf["max_position_embeddings"],
            "emb_dim": hf["hidden_size"], "n_heads": hf["num_attention_heads"], "n_layers": hf["num_hidden_layers"],
            "hidden_dim": hf["intermediate_size"], "head_dim": hf["head_dim"], "qk_norm": True,
            "n_kv_groups": hf["num_key_value_heads"], "rope_base": hf["rope_parameters"]["rope_theta"], "dtype": dtype}


def loaded(cls, path, dtype=torch.float32):
    cfg = settings(path, dtype)
    model = cls(cfg)
    load_weights_into_qwen(model, cfg, load_file(str(Path(path) / "model.safetensors")))
    model.to(dtype)
    model.parity_taps = TAPS
    return model.eval()


def float32(path):
    return loaded(Qwen3Model, path)


def bfloat16(path):
    return loaded(Qwen3Model, path, torch.bfloat16)


def cached_without_a_cache_maker(path):
    return loaded(cached_qwen3.Qwen3Model, path)


def cached(path):
    model = loaded(cached_qwen3.Qwen3Model, path)

    def new_cache():   # as the package's own generate_text_simple starts one
        model.reset_kv_cache()
        return KVCache(n_layers=model.cfg["n_layers"])

    model.parity_new_cache = new_cache
    return model
'''


def factory_file(tmp_path_factory, package: str, name: str, text: str):
    """`text` written as the module `name`.py in a fresh directory, once `package` (the port's) imports."""
    need(package)
    path = tmp_path_factory.mktemp(name) / f"{name}.py"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return factory_file(tmp_path_factory, "llms_from_scratch", "published_ports", FACTORIES)


def check(model_dir, factories, factory):
    result = parity("check", model_dir, f"{factories}:{factory}", "--tokens", TOKEN_ARG, "--json", "-")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def reasons(report) -> dict[str, str]:
    return {item["check"]: item["reason"] for item in report["not_checked"]}


@pytest.mark.parametrize("factory", ["float32", "bfloat16"])
def test_the_published_qwen3_passes_every_checkpoint_it_exposes(model_dirs, factories, factory):
    code, report = check(model_dirs["qwen3"], factories, factory)
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.q_norm", "layers.0.k_norm", "layers.2.out", "logits"} <= compared   # (B, H, T, hd) read
    assert report["candidate"]["dtype"] == factory


def test_its_kv_cache_variant_decodes_through_the_cache_object_it_fills(model_dirs, factories):
    code, report = check(model_dirs["qwen3"], factories, "cached")
    assert code == 0, report["decode"]
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["decode"]["cache"] is not None and report["decode"]["cache"]["first"] is None
    assert "decode" not in reasons(report) and "kv_cache" not in reasons(report)


def test_without_a_way_to_make_its_cache_decoding_is_not_checked_and_says_how(model_dirs, factories):
    code, report = check(model_dirs["qwen3"], factories, "cached_without_a_cache_maker")
    assert code == 0 and report["decode"] is None
    assert "parity_new_cache" in reasons(report)["decode"]
