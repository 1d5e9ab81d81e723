"""CTranslate2 4.8.5 (a C++ inference engine, installed by the set-up), its models converted by its own
transformers converter and handed over as users call them: `Generator.forward_batch`'s logits, a function of
token ids (examples/ctranslate2_candidate.py).

- A Llama converted in float32 passes at its logits (its layers "not checked", with the reason).
- Its Gemma 2 converter keeps no sliding window and no final soft-cap (its decoder spec has neither): the
  check fails at the logits, where no detector can see, and the reference run again without both agrees with
  it within tolerance: named and confirmed. Before: `no_known_cause`.
- Its int8 build fails float32's tolerances at the logits; the note says that its error is the size an int8 build's
  own error is (the reference run with int8 weights and activations, a scale per row), which parity cannot hold
  such a build to without its weights: the failure stands.
- Its Gemma 3 breaks on inputs longer than the sliding window: the forward pass over the prompt runs, the greedy
  run's longer inputs raise in its kernels: one line, exit 2 (was: a traceback).
"""

import pytest

from conftest import ROOT, need
from test_cli import check_json as check

import tiny_models

CANDIDATE = f"{ROOT / 'examples' / 'ctranslate2_candidate.py'}:converted"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Each family saved with the tokenizer CTranslate2's converter reads."""
    need("ctranslate2")

    def saved(family: str):
        directory = tiny_models.save(family, tmp_path_factory.mktemp(f"ct2_{family}"))
        return tiny_models.save_tokenizer(directory)

    return saved


def test_a_llama_converted_by_ctranslate2_passes_at_its_logits(model_dir, capsys):
    code, report = check(capsys, model_dir("llama"), CANDIDATE)
    assert code == 0, report["checkpoints"]
    assert [c["name"] for c in report["checkpoints"]] == ["logits"]
    assert report["calibrated"] and report["candidate"]["dtype"] == "float32"   # the parity_dtype it declares
    assert "function of token ids" in {i["check"]: i["reason"] for i in report["not_checked"]}["layers"]
    assert report["generation"]["first_divergence"] is None


def test_its_gemma2_without_window_and_final_soft_cap_is_named(model_dir, capsys):
    code, report = check(capsys, model_dir("gemma2"), CANDIDATE)
    assert code == 1
    assert report["first_divergence"]["checkpoint"] == "logits"
    [diagnosis] = [d for d in report["diagnoses"] if d["checkpoint"] == "logits"]
    assert diagnosis["cause"] == "config_setting" and diagnosis["confidence"] == "confirmed", diagnosis
    assert "no sliding window" in diagnosis["message"] and "final_logit_softcapping" in diagnosis["message"]


def test_its_gemma3_failing_past_the_prompt_is_one_line(model_dir, capsys):
    from parity.cli import main

    capsys.readouterr()
    code = main(["check", str(model_dir("gemma3")), CANDIDATE, "--tokens", "0,17,5,40"])   # the window: 4
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error.startswith("parity: error: the candidate failed on the greedy run") and "ValueError" in error
    assert "--decode-steps 0 checks the forward pass alone" in error


def test_its_int8_build_fails_with_its_error_the_size_of_int8s(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("CT2_COMPUTE_TYPE", "int8_float32")
    code, report = check(capsys, model_dir("llama"), CANDIDATE)
    assert code == 1 and not report["calibrated"]
    [note] = [note for note in report["notes"] if note.startswith("its error is within 3x the noise that")]
    assert "int8 weights and activations with a scale per row (at logits" in note
    assert "an int8 build's own error is this size" in note and "the failure stands" in note
