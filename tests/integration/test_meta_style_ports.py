"""Ports in the conventions of Meta's Llama code and gpt-fast, end to end (examples/meta_llama.py): positions
as a required argument (start_pos, input_pos), the KV cache held in the attention modules, q and k in the
interleaved RoPE layout, the output head named `output`, the forward under torch.inference_mode."""

import json

import pytest

from conftest import ROOT
from test_cli import TOKEN_ARG, parity

PORTS = '''import meta_llama as m

def start_pos(path):
    return m.build(path)

def input_pos(path):
    return m.build_input_pos(path)

def cache_one_slot_off(path):
    return m.build_with(path, m.Bugs(cache_offset=True))

def only_q_permuted(path):
    return m.build_with(path, m.Bugs(permuted="q"))

def weights_not_permuted(path):
    return m.build_with(path, m.Bugs(permuted=""))

def positions_without_cache(path):
    return m.build_with(path, m.Bugs(cache=False))

def kv_heads_tiled(path):
    return m.build_with(path, m.Bugs(kv_tiled=True))

def values_late(path):
    return m.build_with(path, m.Bugs(values_late=True))

def read_short(path):
    return m.build_with(path, m.Bugs(read_short=True))

def decode_unscaled(path):
    return m.build_with(path, m.Bugs(decode_unscaled=True))
'''


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta_ports") / "ports.py"
    path.write_text(PORTS)
    return path


def check(model_dir, ports, factory, *options):
    result = parity("check", model_dir, f"{ports}:{factory}", "--tokens", TOKEN_ARG, "--json", "-", *options,
                    cwd=ROOT / "examples")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def reasons(report) -> dict[str, str]:
    return {item["check"]: item["reason"] for item in report["not_checked"]}


@pytest.mark.parametrize("factory, keyword", [("start_pos", "start_pos"), ("input_pos", "input_pos")])
def test_a_correct_port_passes_with_decoding_through_the_cache_its_modules_hold(model_dirs, ports, factory, keyword):
    code, report = check(model_dirs["llama"], ports, factory)
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.q", "layers.0.k", "logits"} <= compared
    assert any("interleaved RoPE layout" in note for note in report["notes"])
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["decode"]["chunked_prefill_rel_l2"] < 1e-5
    assert "decode" not in reasons(report) and "chunked_prefill" not in reasons(report)
    assert f"its modules hold its cache (it takes {keyword})" in reasons(report)["kv_cache"]


def test_with_weights_its_q_and_k_rows_in_pair_order_are_read_as_the_references(model_dirs, ports):
    """Its wq and wk hold their rows in pair order (as Meta's checkpoints do), as its q and k activations are kept:
    with --weights the parameters are read in the reference's order too. They failed as weight_mismatch (6/72
    checkpoints, first at layers.0.q.weight) on a correct port."""
    code, report = check(model_dirs["llama"], ports, "start_pos", "--weights", "--decode-steps", "0")
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]
    compared = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.q.weight", "layers.1.k.weight", "layers.0.attn_out.weight", "layers.2.mlp_out.weight"} <= compared
    assert not any(d["cause"] == "weight_mismatch" for d in report["diagnoses"])


def test_strict_rope_pairs_compares_q_and_k_as_stored(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "start_pos", "--strict", "rope_pairs", "--decode-steps", "0")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q"
    assert any(note.startswith("not adapted (--strict rope_pairs): layers.*.k, layers.*.q") for note in report["notes"])
    passed = {c["name"] for c in report["checkpoints"] if c["status"] == "pass"}
    assert {"layers.0.attn_ctx", "logits"} <= passed   # the attention is the same in either layout


def test_a_cache_written_one_slot_off_fails_decoding(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "cache_one_slot_off")
    assert code == 1 and report["verdict"] == "fail"
    assert all(c["status"] == "pass" for c in report["checkpoints"])   # one full pass is right ...
    assert not report["decode"]["passed"]                               # ... decoding through the cache is not
    assert report["decode"]["first_checkpoint"] == "layers.0.attn_ctx"
    # its cache lives in its modules: no keys read back, no probabilities; named from the attention output
    # (it was no_known_cause)
    causes = [(d["cause"], d["checkpoint"]) for d in report["diagnoses"]]
    assert causes == [("kv_cache_offset", "layers.0.attn_ctx")], report["diagnoses"]
    assert "twice and this step's not at all" in report["diagnoses"][0]["message"]


def test_q_permuted_without_k_is_not_read_as_a_layout_and_fails_at_q(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "only_q_permuted")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q"
    assert not any("interleaved RoPE layout" in note for note in report["notes"])
    assert report["diagnoses"][0]["cause"] == "layout_permuted"


def test_pair_rope_on_unpermuted_weights_is_named_from_the_attention(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "weights_not_permuted")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_ctx"
    causes = {(d["cause"], d["checkpoint"]) for d in report["diagnoses"]}
    assert ("rope_layout", "layers.0.attn_ctx") in causes, report["diagnoses"]


def test_kv_heads_expanded_with_repeat_are_named_from_the_attention(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "kv_heads_tiled", "--decode-steps", "0")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_ctx"
    # its probabilities and q, k after RoPE are unrecorded (it was no_known_cause)
    causes = [(d["cause"], d["checkpoint"]) for d in report["diagnoses"]]
    assert causes == [("gqa_head_mapping", "layers.0.attn_ctx")], report["diagnoses"]
    assert "keys and values' 2 heads expanded tiled" in report["diagnoses"][0]["message"]


@pytest.mark.parametrize("factory, cause, words", [
    ("values_late", "kv_cache_offset", "the value of position 10 twice and this step's not at all: each step writes it "
                                       "one slot past where it reads it (its keys right)"),
    ("read_short", "kv_cache_offset", "only positions 0..9: this step's own key and value are left out"),
    ("decode_unscaled", "attention_scale", "scores scaled by 1 (= 1: no scaling) where the model scales by 0.25"),
])
def test_a_decode_path_of_its_own_is_named_from_the_steps_attention_output(model_dirs, ports, factory, cause, words):
    """Each was no_known_cause (the slot one short, a value alone written late, the scale): the whole pass is right."""
    code, report = check(model_dirs["llama"], ports, factory)
    assert code == 1 and all(c["status"] == "pass" for c in report["checkpoints"])
    where = report["decode"]["first_checkpoint"]       # layer 0's, or layer 1's where layer 0's is within the bound
    assert not report["decode"]["passed"] and where in ("layers.0.attn_ctx", "layers.1.attn_ctx")
    causes = [(d["cause"], d["checkpoint"]) for d in report["diagnoses"]]
    assert causes == [(cause, where)], report["diagnoses"]
    assert words in report["diagnoses"][0]["message"]


def test_far_positions_are_refused_for_a_port_whose_positions_continue_its_cache(model_dirs, ports):
    from test_cli import assert_unusable

    result = parity("check", model_dirs["llama"], f"{ports}:start_pos", "--tokens", TOKEN_ARG,
                    "--start-position", "100", cwd=ROOT / "examples")
    assert_unusable(result, "--start-position is not checked")


def test_positions_without_a_cache_are_not_taken_for_decoding(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "positions_without_cache")
    assert code == 0 and report["decode"] is None
    assert "takes start_pos but keeps no cache" in reasons(report)["decode"]


def test_replay_reads_the_ports_q_and_k_in_the_references_order(model_dirs, ports):
    code, report = check(model_dirs["llama"], ports, "start_pos", "--replay", "--decode-steps", "0")
    assert code == 0, report["first_divergence"]
    local = report["replay"]["checkpoints"]
    assert local["layers.0.q"] < 1e-5 and local["layers.0.k"] < 1e-5     # not the layout read as an error
    assert max(local.values()) < 1e-5
