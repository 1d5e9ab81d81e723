"""A failure no detector explains, held against the reference run again under a config setting a port or converter
may read otherwise: named (and confirmed) where the candidate is the reference so, alone or two together; said
as ruled out where none is. Before, a port seen at its logits alone that left RoPE's base at 10000 was
`no_known_cause`, as was any misread setting the layer detectors do not fit, and a server that parted from the
reference had nothing said of it."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from conftest import ROOT, TOKENS  # noqa: E402

FACTORIES = '''import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, {examples!r})
import numpy_llama


def _numpy_port(path, bug=None, **read):
    """examples/numpy_llama.py's forward, the config as a port read it (`read`: fields it got otherwise)."""
    config, weights = numpy_llama.load(Path(path))
    config = dict(config, **read)
    return lambda ids: numpy_llama.forward(config, weights, np.asarray(ids)[0].tolist(), np.dtype("float32"),
                                           bug)["logits"]


def correct(path):
    return _numpy_port(path)


def base_unread(path):                  # a converter that finds no rope_theta where transformers 5 keeps it
    return _numpy_port(path, rope_parameters=dict(rope_theta=10000.0))


def base_and_epsilon_unread(path):
    return _numpy_port(path, rope_parameters=dict(rope_theta=10000.0), rms_norm_eps=1e-6)


def rope_interleaved(path):             # a bug no setting makes
    return _numpy_port(path, "rope_interleaved")


def _module_reading(path, **read):
    config = transformers.AutoConfig.from_pretrained(path)
    for field, value in read.items():
        setattr(config, field, value)
    return transformers.AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32).eval()


def attention_uncapped(path):           # a Gemma 2 module whose attention soft-cap was never read
    return _module_reading(path, attn_logit_softcapping=None)


def logits_uncapped(path):              # ... whose final soft-cap was never read
    return _module_reading(path, final_logit_softcapping=None)
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    path = tmp_path_factory.mktemp("settings") / "misread_ports.py"
    path.write_text(FACTORIES.format(examples=str(ROOT / "examples")))
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama whose base (100000) and epsilon (1e-5) are not what ports assume."""
    return tiny_models.save("llama", tmp_path_factory.mktemp("llama_settings"), rms_norm_eps=1e-5,
                            rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def check(capsys, model_dir, spec, *args):
    """`parity check MODEL SPEC --tokens ... --json -` in this process: (exit code, the JSON report)."""
    import json

    from parity.cli import main

    capsys.readouterr()
    code = main(["check", str(model_dir), spec, "--tokens", ",".join(map(str, TOKENS)), "--json", "-", *args])
    return code, json.loads(capsys.readouterr().out)


def _diagnoses(report, checkpoint: str) -> list[dict]:
    return [d for d in report["diagnoses"] if d["checkpoint"] == checkpoint]


def test_a_base_left_at_10000_behind_a_function_is_named_and_confirmed(llama_dir, factories, capsys):
    code, report = check(capsys, llama_dir, f"{factories}:base_unread")
    assert code == 1
    [diagnosis] = _diagnoses(report, "logits")
    assert diagnosis["cause"] == "rope_theta" and diagnosis["confidence"] == "confirmed", diagnosis
    assert "RoPE's base 10000 where the config says 100000" in diagnosis["message"]


def test_two_settings_read_otherwise_are_named_together(llama_dir, factories, capsys):
    code, report = check(capsys, llama_dir, f"{factories}:base_and_epsilon_unread")
    assert code == 1
    [diagnosis] = _diagnoses(report, "logits")
    assert diagnosis["cause"] == "config_setting" and diagnosis["confidence"] == "confirmed", diagnosis
    assert "rope_parameters.rope_theta" in diagnosis["message"] and "rms_norm_eps 1e-06" in diagnosis["message"]


def test_a_bug_no_setting_makes_stays_unexplained_with_the_settings_ruled_out(llama_dir, factories, capsys):
    code, report = check(capsys, llama_dir, f"{factories}:rope_interleaved")
    assert code == 1
    [diagnosis] = _diagnoses(report, "logits")
    assert diagnosis["cause"] == "no_known_cause"
    assert "ruled out by running the reference again: a config setting read otherwise (rms_norm_eps, " \
           "rope_parameters.rope_theta)" in diagnosis["message"]


def test_a_correct_port_passes_without_the_settings_tried(llama_dir, factories, capsys):
    code, report = check(capsys, llama_dir, f"{factories}:correct")
    assert code == 0, report["checkpoints"]
    assert not any("config setting" in d["message"] for d in report["diagnoses"])


def test_a_layer_seen_failing_is_held_to_the_reference_run_there_too(factories, tmp_path, capsys):
    """A Gemma 2 module without its attention soft-cap: the first divergence, the attention probabilities of
    layer 0, is unexplained by the detectors; the reference run uncapped agrees there and at the logits."""
    model_dir = tiny_models.save("gemma2", tmp_path)
    code, report = check(capsys, model_dir, f"{factories}:attention_uncapped")
    assert code == 1
    assert report["first_divergence"]["checkpoint"] == "layers.0.attn_probs"
    [diagnosis] = _diagnoses(report, "layers.0.attn_probs")
    assert diagnosis["cause"] == "config_setting" and diagnosis["confidence"] == "confirmed", diagnosis
    assert "attn_logit_softcapping is 20" in diagnosis["message"]
    assert "at logits and layers.0.attn_probs within tolerance" in diagnosis["message"]


def test_what_a_detector_names_is_kept(factories, tmp_path, capsys):
    """Its final soft-cap left out, a Gemma 2 module's logits are the head's output: `op_skipped`, found by the
    detectors, and the settings are not tried; the head's weights are not blamed (was: `output_projection`
    beside it, "the output projection is wrong")."""
    model_dir = tiny_models.save("gemma2", tmp_path)
    code, report = check(capsys, model_dir, f"{factories}:logits_uncapped")
    assert code == 1
    assert [d["cause"] for d in _diagnoses(report, "logits")] == ["op_skipped"]
    [structure] = _diagnoses(report, "lm_head_out")          # where it says the op is: after the final norm
    assert "records no lm_head_out between final_norm and logits" in structure["message"]


def _reading(*fields, passed=False, visible=True, left=1.0):
    from parity.commands.check.settings import Reading
    from parity.core.config_settings import Setting

    settings = tuple(Setting(field, field, ((field, 0),), "config_setting") for field in fields)
    return Reading(settings, passed, visible, left, left)


def test_settings_are_added_while_each_brings_the_candidate_closer():
    """One misreading's error can hide another's: the second is tried beside the first even where alone it
    changes nothing, and a third is not added once they pass."""
    from parity.commands.check.settings import _search
    from parity.core.config_settings import Setting

    settings = tuple(Setting(field, field, ((field, 0),), "config_setting") for field in ("a", "b", "c"))
    lefts = {("a",): 0.02, ("b",): 1.0, ("c",): 1.0, ("a", "b"): 1e-4, ("a", "c"): 0.02}

    def read(chosen):
        key = tuple(setting.field for setting in chosen)
        return _reading(*key, passed=key == ("a", "b"), left=lefts[key])

    found = _search(settings, read)
    assert [setting.field for setting in found.settings] == ["a", "b"] and found.passed


def test_a_reading_is_named_only_where_it_shows_and_takes_the_error_away():
    """A marginal failure nudged within its bound by a setting that moves nothing the check can see, or takes
    little of the error away, is not a diagnosis."""
    from parity.commands.check.settings import named

    assert named(_reading("a", passed=True, left=0.01)) == "confirmed"
    assert named(_reading("a", passed=False, left=0.05)) == "likely"
    assert named(_reading("a", passed=True, left=0.8)) is None
    assert named(_reading("a", passed=True, left=0.01, visible=False)) is None
    assert named(_reading("a", passed=False, left=0.3)) is None
    assert named(None) is None


@pytest.fixture(scope="module")
def server_of_a_misread_gguf(smollm2_gguf, tmp_path_factory):
    """llama.cpp's server (llama-cpp-python) serving SmolLM2's GGUF with its RoPE base written as 10000."""
    from conftest import need
    from llama_servers import serving, with_metadata_value

    need("llama_cpp")
    need("uvicorn")
    misread = with_metadata_value(smollm2_gguf, "llama.rope.freq_base", "f", 100000.0, 10000.0,   # SmolLM2's base
                                  tmp_path_factory.mktemp("misread_gguf") / "smollm2-base-10000.gguf")
    with serving(misread) as url:
        yield url


def test_a_server_computing_with_another_setting_is_named(smollm2_gguf, server_of_a_misread_gguf, capsys):
    """The server's text and top-k log-probabilities part from the reference's at a confident token; the
    reference run with RoPE's base at 10000 agrees with its top-1 everywhere, its KL ten times smaller."""
    import json

    from parity.cli import main

    capsys.readouterr()
    code = main(["check", str(smollm2_gguf), server_of_a_misread_gguf, "--prompt",
                 "The capital of France is Paris, and the capital of Italy is", "-n", "24",
                 "--server-option", "repeat_penalty=1.0", "--json", "-"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    [diagnosis] = report["diagnoses"]
    assert diagnosis["cause"] == "rope_theta" and diagnosis["confidence"] == "confirmed", diagnosis
    assert "RoPE's base 10000 where the config says 100000" in diagnosis["message"]
