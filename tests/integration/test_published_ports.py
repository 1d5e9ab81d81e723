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


def float32_untapped(path):
    model = loaded(Qwen3Model, path)
    del model.parity_taps
    return model


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


def test_given_no_taps_it_is_compared_at_the_same_checkpoints_as_with_them(model_dirs, factories):
    reports = [check(model_dirs["qwen3"], factories, factory) for factory in ("float32", "float32_untapped")]
    assert [code for code, _ in reports] == [0, 0]
    tapped, untapped = ({c["name"] for c in report["checkpoints"]} for _, report in reports)
    assert untapped == tapped and "layers.0.mlp_gate" in untapped and "layers.0.q_norm" in untapped


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


# The same package's Llama 3.2 and its chapter-4 GPT, given no taps: parity finds their checkpoints in their own
# names (trf_blocks, att.W_query, ff, norm1, out_proj; the GPT's blocks an nn.Sequential, its MLP ff.layers[0, 2];
# the Llama's gated MLP fc1, fc2, fc3, told apart by their shapes and its forward's code where names do not say).
UNTAPPED = '''import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from llms_from_scratch.ch04 import GPTModel
from llms_from_scratch.llama3 import Llama3Model, load_weights_into_llama


def llama(path, dtype=torch.float32, original_context=None):
    hf = json.loads((Path(path) / "config.json").read_text())
    rope = hf["rope_parameters"]
    cfg = {"vocab_size": hf["vocab_size"], "context_length": hf["max_position_embeddings"],
           "emb_dim": hf["hidden_size"], "n_heads": hf["num_attention_heads"], "n_layers": hf["num_hidden_layers"],
           "hidden_dim": hf["intermediate_size"], "n_kv_groups": hf["num_key_value_heads"],
           "rope_base": rope["rope_theta"], "dtype": dtype,
           "rope_freq": {"factor": rope["factor"], "low_freq_factor": rope["low_freq_factor"],
                         "high_freq_factor": rope["high_freq_factor"],
                         "original_context_length": original_context or rope["original_max_position_embeddings"]}}
    model = Llama3Model(cfg)
    load_weights_into_llama(model, cfg, load_file(str(Path(path) / "model.safetensors")))
    return model.to(dtype).eval()


def llama_float32(path):
    return llama(path)


def llama_bfloat16(path):
    return llama(path, torch.bfloat16)


def llama_1b_context(path):      # the package's LLAMA32_CONFIG_1B's original context kept: 8192
    return llama(path, original_context=8192)


def gpt(path, untransposed_out_proj=False):
    """GPTModel with a transformers GPT-2's weights: c_attn split, Conv1D's (in, out) weights transposed."""
    hf = json.loads((Path(path) / "config.json").read_text())
    cfg = {"vocab_size": hf["vocab_size"], "context_length": hf["n_positions"], "emb_dim": hf["n_embd"],
           "n_heads": hf["n_head"], "n_layers": hf["n_layer"], "drop_rate": 0.0, "qkv_bias": True}
    model = GPTModel(cfg)
    sd = {k.removeprefix("transformer."): v for k, v in load_file(str(Path(path) / "model.safetensors")).items()}
    with torch.no_grad():
        model.tok_emb.weight.copy_(sd["wte.weight"])
        model.pos_emb.weight.copy_(sd["wpe.weight"])
        for i, block in enumerate(model.trf_blocks):
            p = f"h.{i}."
            weights = sd[p + "attn.c_attn.weight"].split(cfg["emb_dim"], dim=1)
            biases = sd[p + "attn.c_attn.bias"].split(cfg["emb_dim"])
            for linear, weight, bias in zip((block.att.W_query, block.att.W_key, block.att.W_value), weights, biases):
                linear.weight.copy_(weight.T)
                linear.bias.copy_(bias)
            out = sd[p + "attn.c_proj.weight"]
            block.att.out_proj.weight.copy_(out if untransposed_out_proj else out.T)
            block.att.out_proj.bias.copy_(sd[p + "attn.c_proj.bias"])
            block.ff.layers[0].weight.copy_(sd[p + "mlp.c_fc.weight"].T)
            block.ff.layers[0].bias.copy_(sd[p + "mlp.c_fc.bias"])
            block.ff.layers[2].weight.copy_(sd[p + "mlp.c_proj.weight"].T)
            block.ff.layers[2].bias.copy_(sd[p + "mlp.c_proj.bias"])
            for norm, name in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
                norm.scale.copy_(sd[p + name + ".weight"])
                norm.shift.copy_(sd[p + name + ".bias"])
        model.final_norm.scale.copy_(sd["ln_f.weight"])
        model.final_norm.shift.copy_(sd["ln_f.bias"])
        model.out_head.weight.copy_(sd.get("lm_head.weight", sd["wte.weight"]))
    return model.eval()


def gpt_float32(path):
    return gpt(path)


def gpt_out_proj_untransposed(path):
    return gpt(path, untransposed_out_proj=True)
'''
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


@pytest.fixture(scope="module")
def untapped(tmp_path_factory):
    return factory_file(tmp_path_factory, "llms_from_scratch", "untapped_ports", UNTAPPED)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """A tiny Llama with Llama 3's RoPE scaling, from an original context of 32 positions, and its norms' epsilon
    (the package's RMSNorm is built with 1e-5, whatever the checkpoint's config says: with 1e-6 the port fails at
    layers.0.attn_norm, named norm_epsilon)."""
    import tiny_models

    return tiny_models.save("llama", tmp_path_factory.mktemp("llama3_rope"), rope_parameters=LLAMA3_ROPE,
                            rms_norm_eps=1e-5)


@pytest.mark.parametrize("factory", ["llama_float32", "llama_bfloat16"])
def test_its_llama_3_with_no_taps_passes_at_the_checkpoints_its_names_give(llama3_dir, untapped, factory):
    code, report = check(llama3_dir, untapped, factory)
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.attn_norm", "layers.0.q", "layers.0.k", "layers.0.v", "layers.0.attn_ctx", "layers.0.attn_out",
            "layers.0.mlp_norm", "layers.0.mlp_gate", "layers.0.mlp_up", "layers.0.mlp_act", "layers.0.mlp_out",
            "layers.2.out", "final_norm", "logits"} <= compared    # fc1 the gate: its forward activates it


def test_its_llama_3_built_with_the_1b_configs_original_context_is_named_rope_scaling(llama3_dir, untapped):
    code, report = check(llama3_dir, untapped, "llama_1b_context")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_ctx"
    [found] = [d for d in report["diagnoses"] if d["checkpoint"] == "layers.0.attn_ctx"]
    assert found["cause"] == "rope_scaling"
    assert "original_max_position_embeddings 8192 for 32" in found["message"], found["message"]


def test_its_chapter_4_gpt_with_no_taps_passes_and_an_untransposed_conv1d_weight_is_named(model_dirs, untapped):
    code, report = check(model_dirs["gpt2"], untapped, "gpt_float32")
    assert code == 0, report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.attn_norm", "layers.0.q", "layers.0.attn_out", "layers.0.mlp_fc", "layers.0.mlp_act",
            "layers.0.mlp_out", "layers.2.out", "final_norm", "logits"} <= compared
    code, report = check(model_dirs["gpt2"], untapped, "gpt_out_proj_untransposed")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_out"
    [found] = [d for d in report["diagnoses"] if d["checkpoint"] == "layers.0.attn_out"]
    assert found["cause"] == "weight_mismatch" and "transposed" in found["message"], found


# Its Qwen3-MoE, given no taps: a `gate` linear to the experts' logits beside lists of each expert's fc1, fc2, fc3,
# the top k picked inside its forward. Its router's logits are recorded; the experts it chose are taken from them.
MOE = '''import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from llms_from_scratch.qwen3 import Qwen3Model, load_weights_into_qwen


def loaded(path, dtype=torch.float32, router_of_layer=None):
    hf = json.loads((Path(path) / "config.json").read_text())
    cfg = {"vocab_size": hf["vocab_size"], "context_length": hf["max_position_embeddings"],
           "emb_dim": hf["hidden_size"], "n_heads": hf["num_attention_heads"], "n_layers": hf["num_hidden_layers"],
           "hidden_dim": hf["intermediate_size"], "head_dim": hf["head_dim"], "qk_norm": True,
           "n_kv_groups": hf["num_key_value_heads"], "rope_base": hf["rope_parameters"]["rope_theta"], "dtype": dtype,
           "num_experts": hf.get("num_experts") or hf["num_local_experts"],
           "num_experts_per_tok": hf["num_experts_per_tok"], "moe_intermediate_size": hf["moe_intermediate_size"]}
    model = Qwen3Model(cfg)
    load_weights_into_qwen(model, cfg, load_file(str(Path(path) / "model.safetensors")))
    if router_of_layer is not None:          # a loader that read another layer's router into layer 1
        model.trf_blocks[1].ff.gate.weight = model.trf_blocks[router_of_layer].ff.gate.weight
    return model.to(dtype).eval()


def float32(path):
    return loaded(path)


def bfloat16(path):
    return loaded(path, torch.bfloat16)


def router_of_layer_0(path):
    return loaded(path, router_of_layer=0)
'''


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory):
    """A tiny Qwen3-MoE (8 experts, 2 a token, normalized over the chosen as Qwen3's checkpoints are), its routers
    decisive, and the package's MoE port of it."""
    import torch
    transformers = pytest.importorskip("transformers")
    factories = factory_file(tmp_path_factory, "llms_from_scratch", "moe_ports", MOE)
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=128, tie_word_embeddings=False, mlp_only_layers=[])
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                parameter.copy_(torch.randn_like(parameter))
    directory = tmp_path_factory.mktemp("qwen3_moe")
    model.save_pretrained(directory)
    return directory, factories


@pytest.mark.parametrize("factory", ["float32", "bfloat16"])
def test_its_qwen3_moe_passes_its_experts_taken_from_its_router_logits(qwen3_moe, factory):
    """In bfloat16 this model's port sends token 9 of layer 1 to other experts at a near tie (transformers 5.24's
    random init): unseen, its MoE output there failed with no known cause; now it is followed."""
    directory, factories = qwen3_moe
    code, report = check(directory, factories, factory)
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.moe_router_logits", "layers.0.moe_experts", "layers.2.moe_experts", "layers.2.mlp_out"} <= compared
    assert any("records its router's logits but not the experts it chose" in note for note in report["notes"])


def test_its_qwen3_moe_with_another_layers_router_fails_at_the_router(qwen3_moe):
    directory, factories = qwen3_moe
    code, report = check(directory, factories, "router_of_layer_0")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.1.moe_router_logits"
