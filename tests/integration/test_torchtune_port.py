"""A PyTorch port nobody here wrote: torchtune's Llama 3 builder (`torchtune.models.llama3.llama3`) with the
weights converted by torchtune's own `hf_to_tune`, as a torchtune user loads a transformers checkpoint. No
`parity_taps`: its blocks, attention (q_proj ... output_proj), MLP (w1, w2, w3) and norms (sa_norm,
mlp_norm) are found by their names; RoPE and the softmax are inline, so q_rope, k_rope and the
probabilities are not recorded. With its caches set up (`setup_caches`) its forward demands a mask and its
caches count their own positions: parity gives the mask and empties them at position 0, and decodes through them."""

import pytest

from test_published_ports import check, factory_file, reasons

FACTORIES = '''import json
from pathlib import Path

from safetensors.torch import load_file
from torchtune.models.convert_weights import hf_to_tune
from torchtune.models.llama3 import llama3


def built(path, **rope):
    cfg = json.loads((Path(path) / "config.json").read_text())
    model = llama3(vocab_size=cfg["vocab_size"], num_layers=cfg["num_hidden_layers"],
                   num_heads=cfg["num_attention_heads"], num_kv_heads=cfg["num_key_value_heads"],
                   embed_dim=cfg["hidden_size"], max_seq_len=cfg["max_position_embeddings"],
                   intermediate_dim=cfg["intermediate_size"], norm_eps=cfg["rms_norm_eps"], **rope)
    weights = load_file(str(Path(path) / "model.safetensors"))
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    model.load_state_dict(hf_to_tune(weights, num_heads=cfg["num_attention_heads"],
                                     num_kv_heads=cfg["num_key_value_heads"], dim=cfg["hidden_size"]))
    return model.eval()


def correct(path):
    cfg = json.loads((Path(path) / "config.json").read_text())
    return built(path, rope_base=cfg["rope_parameters"]["rope_theta"])


def default_base(path):
    return built(path)          # the builder's own RoPE base, 500000, where the checkpoint's is another


def cached(path):
    import torch

    model = correct(path)
    model.setup_caches(batch_size=1, dtype=torch.float32, decoder_max_seq_len=64)
    return model


def cached_decoding_one_position_on(path):
    model = cached(path)

    class OnePositionOn(type(model)):
        """A wrapper that passes a decoded token's position one too far (its RoPE), as an off-by-one does."""

        def forward(self, tokens, *, mask=None, input_pos=None):
            if tokens.shape[1] == 1 and input_pos is not None:
                input_pos = input_pos + 1
            return super().forward(tokens, mask=mask, input_pos=input_pos)

    model.__class__ = OnePositionOn
    return model
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return factory_file(tmp_path_factory, "torchtune", "torchtune_ports", FACTORIES)


def test_torchtunes_llama_passes_mapped_by_its_names(model_dirs, factories):
    code, report = check(model_dirs["llama"], factories, "correct")
    assert code == 0, report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"embed", "layers.2.attn_norm", "layers.2.q", "layers.2.attn_ctx", "layers.2.mlp_gate", "layers.2.mlp_act",
            "layers.2.resid_mid", "layers.2.out", "final_norm", "logits"} <= compared
    assert any("interleaved RoPE layout" in note for note in report["notes"])   # hf_to_tune permutes q and k
    not_checked = reasons(report)
    assert "keeps no cache" in not_checked["decode"]


def test_its_builders_default_rope_base_is_named_from_the_attention(model_dirs, factories):
    """Before: no_known_cause at layers.0.attn_ctx (its q_rope and k_rope are not recorded)."""
    code, report = check(model_dirs["llama"], factories, "default_base")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_ctx"
    diagnosis = report["diagnoses"][0]
    assert diagnosis["cause"] == "rope_theta" and "theta 5e+05 where the reference uses theta 1e+04" in \
        diagnosis["message"], report["diagnoses"]


def test_with_its_caches_set_up_it_decodes_through_them(model_dirs, factories):
    """Before: refused (its forward demands a mask once its caches are set up)."""
    code, report = check(model_dirs["llama"], factories, "cached")
    assert code == 0, report["first_divergence"]
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["decode"]["chunked_prefill_rel_l2"] < 1e-5
    not_checked = reasons(report)
    assert "decode" not in not_checked and "chunked_prefill" not in not_checked


def test_a_decoded_token_rotated_one_position_on_fails_decoding(model_dirs, factories):
    code, report = check(model_dirs["llama"], factories, "cached_decoding_one_position_on")
    assert code == 1 and report["summary"]["failed"] == 0          # the whole pass is right ...
    assert not report["decode"]["passed"] and report["decode"]["first_step"] == 1   # ... decoding is not
