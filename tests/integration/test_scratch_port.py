"""A port written from scratch, as a porter writes one (examples/scratch_llama.py): its own module names,
heads kept as (B, H, T, hd), weights read from the directory, a cache of its own. It checks right the first
time, with no option beyond its config, in float32 and bfloat16; each planted bug fails at its place."""

import json

import pytest

from conftest import ROOT, TOKENS
from test_cli import TOKEN_ARG, parity

PORT = ROOT / "examples" / "scratch_llama.py"


def check(capsys, model_dir, factory, *args):
    from parity.cli import main   # in-process: no interpreter importing torch per case

    capsys.readouterr()
    code = main(["check", str(model_dir), f"{PORT}:{factory}", "--tokens", TOKEN_ARG, "--json", "-", *args])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("factory", ["build", "build_bfloat16"])
def test_the_correct_port_passes_check_with_no_option(model_dirs, factory, capsys):
    code, report = check(capsys, model_dirs["llama"], factory)
    assert code == 0, [c for c in report["checkpoints"] if c["status"] != "pass"][:3]
    assert report["summary"]["failed"] == 0 and report["summary"]["compared"] == 51
    assert report["calibrated"] and report["decode"]["passed"]
    assert not any(d["cause"] == "layout_permuted" for d in report["diagnoses"])   # its layout is no finding


@pytest.mark.parametrize("factory, checkpoint, cause", [
    ("rope_interleaved", "layers.0.q_rope", "rope_layout"),
    ("eps_outside_sqrt", "layers.0.attn_norm", "norm_epsilon"),
])
def test_a_planted_bug_fails_check_at_its_place_with_its_cause(model_dirs, factory, checkpoint, cause, capsys):
    code, report = check(capsys, model_dirs["llama"], factory)
    assert code == 1 and report["first_divergence"]["checkpoint"] == checkpoint
    assert cause in [d["cause"] for d in report["diagnoses"]]


def test_dropout_left_on_is_named_where_two_runs_part(model_dirs, capsys):
    code, report = check(capsys, model_dirs["llama"], "dropout_on", "--decode-steps", "0")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_ctx"
    causes = [(d["cause"], d["checkpoint"]) for d in report["diagnoses"]]
    assert causes[0] == ("nondeterministic", "layers.0.attn_ctx"), report["diagnoses"]   # was no_known_cause
    assert "no_known_cause" not in {cause for cause, _ in causes}
    assert "dropout left on" in report["diagnoses"][0]["message"]


def test_a_deterministic_bug_is_not_taken_for_randomness(model_dirs, capsys):
    code, report = check(capsys, model_dirs["llama"], "mask_off", "--decode-steps", "0")
    assert code == 1 and "nondeterministic" not in {d["cause"] for d in report["diagnoses"]}


ONE_CALL = '''import scratch_llama


def mask_off_once(path):
    """The mask-off port, whose forward refuses a second whole pass (state kept from the first)."""
    model = scratch_llama.build(path, scratch_llama.Bugs(mask_off=True))
    calls = []

    def once(module, args):
        calls.append(len(calls))
        if len(calls) > 1:
            raise RuntimeError("the buffers were consumed by the first call")

    model.register_forward_pre_hook(once)
    return model
'''


def test_a_second_run_that_fails_is_a_note_not_a_crash(model_dirs, capsys, tmp_path):
    from parity.cli import main

    ports = tmp_path / "once_ports.py"
    ports.write_text(ONE_CALL)
    capsys.readouterr()
    code = main(["check", str(model_dirs["llama"]), f"{ports}:mask_off_once", "--tokens", TOKEN_ARG, "--json", "-",
                 "--decode-steps", "0"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_probs"
    assert any("a second run of the candidate on the same tokens failed" in note and "consumed" in note
               for note in report["notes"]), report["notes"]


def test_a_cache_bug_fails_decoding_at_the_key_it_rotates_wrongly(model_dirs, capsys):
    code, report = check(capsys, model_dirs["llama"], "cache_position_off")
    assert code == 1 and report["summary"]["failed"] == 0          # one full pass is right ...
    assert not report["decode"]["passed"] and report["decode"]["first_checkpoint"] == "layers.0.k_rope"


def test_generate_and_bench_take_the_port(model_dirs, tmp_path):
    generated = parity("generate", model_dirs["llama"], f"{PORT}:build", "--tokens", TOKEN_ARG, "-n", "6",
                       "--json", "-")
    assert generated.returncode == 0, generated.stderr
    assert json.loads(generated.stdout)["first_divergence"] is None
    bench = parity("bench", model_dirs["llama"], f"{PORT}:build", "--prompt-tokens", "8", "--decode-tokens", "2",
                   "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", tmp_path / "bench.json")
    assert bench.returncode == 0, bench.stderr
    candidate = json.loads((tmp_path / "bench.json").read_text())["candidate"]
    assert candidate["decode_tokens_per_s"] > 0 and candidate["decode_note"] is None


def test_assert_parity_on_a_fixture_reference_calibrates_to_the_ports_precision(model_dirs):
    import scratch_llama

    from parity.testing import ParityAssertionError, ReferenceCache, assert_parity

    reference = ReferenceCache()(model_dirs["llama"], tokens=TOKENS)   # what the parity_reference fixture gives
    result = assert_parity(reference, scratch_llama.build_bfloat16(model_dirs["llama"]))
    assert result.calibrated
    with pytest.raises(ParityAssertionError, match="layers.0.attn_norm"):
        assert_parity(reference, scratch_llama.eps_outside_sqrt(model_dirs["llama"]))


SANITY_PASSES = ("structure", "norm", "decoder_layer", "forward", "kv_cache", "gradients", "stability")
SANITY_NOT_CHECKED = ("rope", "attention", "mlp", "loss")   # no such modules, no labels: named, not failed


def sanity(model_dir, factory, tmp_path, *args):
    output = tmp_path / f"{factory}.json"
    result = parity("sanity", f"{PORT}:{factory}", "--reference", model_dir, "--json", output, *args)
    tests = {test["name"]: test for test in json.loads(output.read_text())["results"]} if output.exists() else {}
    return result, tests


@pytest.mark.parametrize("factory, dtype", [("build", "float32"), ("build_bfloat16", "bfloat16")])
def test_sanity_finds_the_ports_components_by_their_own_names(model_dirs, factory, dtype, tmp_path):
    result, tests = sanity(model_dirs["llama"], factory, tmp_path, "--dtype", dtype)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {name for name, test in tests.items() if test["status"] == "passed"} == set(SANITY_PASSES), tests
    assert all(tests[name]["message"].startswith("not checked:") for name in SANITY_NOT_CHECKED)
    assert "4 not checked (rope, attention, mlp, loss" in result.stdout
    strict, _ = sanity(model_dirs["llama"], factory, tmp_path, "--dtype", dtype, "--strict", "--force")
    assert strict.returncode == 1


@pytest.mark.parametrize("factory, failing", [
    ("eps_outside_sqrt", {"forward", "gradients"}),
    ("cache_position_off", {"kv_cache"}),
    ("rope_interleaved", {"decoder_layer", "forward", "gradients"}),
])
def test_sanity_fails_a_planted_bug_of_the_port_at_its_tests(model_dirs, factory, failing, tmp_path):
    result, tests = sanity(model_dirs["llama"], factory, tmp_path)
    assert result.returncode == 1
    assert {name for name, test in tests.items() if test["status"] == "failed"} == failing


@pytest.mark.parametrize("factory, passes", [("build_bfloat16", True), ("rope_interleaved", False),
                                             ("eps_outside_sqrt", False)])
def test_generate_holds_teacher_forced_kl_to_the_ports_precision(model_dirs, factory, passes):
    """On a tiny random model greedy decoding rarely tells a bug (its distributions are near uniform); the
    teacher-forced KL against 9x what the port's precision makes does."""
    result = parity("generate", model_dirs["llama"], f"{PORT}:{factory}", "--tokens", TOKEN_ARG, "-n", "6",
                    "--json", "-")
    assert result.returncode == (0 if passes else 1), result.stderr
    forced = json.loads(result.stdout)["teacher_forced"]
    assert forced["kl_bound"] > 0 and ("bfloat16" if factory == "build_bfloat16" else "float32") in forced["kl_basis"]
    assert bool(forced["over_bound"]) is not passes
