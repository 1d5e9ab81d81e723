"""Token-by-token decoding through the candidate's KV cache against one full pass, inside parity check."""

import json

import pytest

from conftest import ROOT
from test_cli import TOKEN_ARG, parity

PORTS = '''import llama_port
import transformers

def correct(path):
    return llama_port.build(path)

def cache_one_position_off(path):
    return llama_port.build(path, llama_port.Bugs(kv_cache_offset=True))

def cached_keys_not_rotated(path):
    return llama_port.build(path, llama_port.Bugs(skip_rope_cached=True))

def transformers_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()
'''


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    path = tmp_path_factory.mktemp("ports") / "ports.py"
    path.write_text(PORTS)
    return path


def check(model_dir, ports, factory):
    result = parity("check", model_dir, f"{ports}:{factory}", "--tokens", TOKEN_ARG, "--json", "-", cwd=ROOT / "examples")
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("factory", ["correct", "transformers_model"])
def test_a_consistent_decode_path_passes(model_dirs, ports, factory):
    code, report = check(model_dirs["qwen3"], ports, factory)
    assert code == 0, report["decode"]
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["generation"]["first_divergence"] is None


@pytest.mark.parametrize("factory, cause", [
    ("cache_one_position_off", "kv_cache_offset"),
    ("cached_keys_not_rotated", "decode_rope"),
])
def test_a_broken_decode_path_is_caught_at_its_first_step_with_its_cause(model_dirs, ports, factory, cause):
    code, report = check(model_dirs["llama"], ports, factory)
    assert code == 1 and report["verdict"] == "fail"
    assert all(c["status"] == "pass" for c in report["checkpoints"])   # one full pass is right ...
    decode = report["decode"]
    assert decode["first_step"] == 1 and decode["position"] == len(TOKEN_ARG.split(","))  # ... the first decoded token is not
    assert decode["first_checkpoint"] == "layers.0.attn_probs"
    assert cause in [d["cause"] for d in report["diagnoses"]]


def test_the_kv_cache_and_prefill_variants(model_dirs, ports):
    _, correct = check(model_dirs["llama"], ports, "correct")
    assert correct["decode"]["cache"]["passed"] and correct["decode"]["chunked_prefill_rel_l2"] < 1e-5
    _, hf = check(model_dirs["llama"], ports, "transformers_model")
    assert set(hf["decode"]["batch_rel_l2"]) == {"left", "right"} and max(hf["decode"]["batch_rel_l2"].values()) < 1e-4
    _, unrotated = check(model_dirs["llama"], ports, "cached_keys_not_rotated")
    cache = unrotated["decode"]["cache"]
    assert not cache["passed"] and cache["first"][:2] == ["keys", 0]
    assert unrotated["decode"]["chunked_prefill_rel_l2"] > max(unrotated["decode"]["bounds"])
