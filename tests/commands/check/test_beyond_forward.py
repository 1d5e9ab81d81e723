"""Decoding checks after a long prompt hold the logits of the positions they compare, not T x V per side: the
report is the one the whole rows give, a decode bug still fails at its step, and what does not run says why."""

import json

import pytest

from conftest import ROOT, TOKENS

pytest.importorskip("torch")

PORT = ROOT / "examples" / "scratch_llama.py"


def report_of(model, candidate, capsys, monkeypatch, long: bool):
    from parity.capture.torch import incremental
    from parity.cli import main
    from parity.commands.check import beyond_forward

    if long:   # every prompt is long: only the rows from the last prompt position are made, the prefill not recorded
        monkeypatch.setattr(beyond_forward, "FULL_LOGITS_BYTES", 0)
        monkeypatch.setattr(incremental, "RECORDED_PREFILL_TOKENS", 2)
    capsys.readouterr()
    code = main(["check", str(model), candidate, "--tokens", ",".join(map(str, TOKENS)), "--json", "-",
                 "--decode-steps", "5"])
    monkeypatch.undo()
    return code, json.loads(capsys.readouterr().out)


def not_checked(report) -> dict:
    return {item["check"]: item["reason"] for item in report["not_checked"]}


def assert_same_decoding(whole, rows):
    """The decode checks agree: tokens, the first divergence, each step's verdict and error."""
    for key in ("verdict", "reference_tokens", "candidate_tokens", "first_divergence"):
        assert rows["generation"][key] == whole["generation"][key], key
    for key in ("passed", "first_step", "position"):
        assert rows["decode"][key] == whole["decode"][key], key
    # the bounds come from a run at the candidate's precision, which also puts fewer rows through its output head
    assert rows["decode"]["bounds"] == pytest.approx(whole["decode"]["bounds"], rel=1e-4)
    # a transformers model puts fewer rows through its output head: its float32 rounding differs, by far less
    # than the bound each step is held to
    for error_rows, error_whole, bound in zip(rows["decode"]["rel_l2"], whole["decode"]["rel_l2"],
                                              whole["decode"]["bounds"]):
        assert abs(error_rows - error_whole) <= 0.05 * bound
    assert rows["generation"]["teacher_forced"]["kl"] == pytest.approx(whole["generation"]["teacher_forced"]["kl"],
                                                                       rel=1e-3, abs=1e-12)
    assert rows["generation"]["teacher_forced"]["top1"] == whole["generation"]["teacher_forced"]["top1"]


@pytest.mark.parametrize("factory, code", [("build", 0), ("cache_position_off", 1), ("unmasked_given_positions", 1)])
def test_after_a_long_prompt_a_port_decodes_against_the_rows_it_compares(model_dirs, capsys, monkeypatch, factory,
                                                                         code):
    whole_code, whole = report_of(model_dirs["llama"], f"{PORT}:{factory}", capsys, monkeypatch, long=False)
    rows_code, rows = report_of(model_dirs["llama"], f"{PORT}:{factory}", capsys, monkeypatch, long=True)
    assert whole_code == rows_code == code
    assert_same_decoding(whole, rows)
    # the port takes no attention_mask: that reason stands at any length
    assert not_checked(rows)["padding"] == not_checked(whole)["padding"]
    assert "attention_mask" in not_checked(rows)["padding"]
    if code:   # located to the same checkpoint, with the same causes, from the full pass's rows at that position
        assert whole["decode"]["first_checkpoint"]
        assert rows["decode"]["first_checkpoint"] == whole["decode"]["first_checkpoint"]
        assert rows["diagnoses"] == whole["diagnoses"]
        assert not any("was not located" in note for note in rows["notes"])


def test_after_a_long_prompt_a_transformers_candidate_decodes_against_the_rows_it_compares(model_dirs, capsys,
                                                                                           monkeypatch):
    whole_code, whole = report_of(model_dirs["llama"], str(model_dirs["llama"]), capsys, monkeypatch, long=False)
    rows_code, rows = report_of(model_dirs["llama"], str(model_dirs["llama"]), capsys, monkeypatch, long=True)
    assert whole_code == rows_code == 0
    assert_same_decoding(whole, rows)
    assert whole["decode"]["cache"] is not None and rows["decode"]["cache"] is not None
    assert whole["decode"]["batch_rel_l2"] and "padding" not in not_checked(whole)
    assert whole["decode"]["batch_prompt_tokens"] == len(TOKENS)
    # past the logits a long check holds, padded batches run on the prompt's first tokens (here 2), and say so
    assert "padding" not in not_checked(rows) and rows["decode"]["batch_prompt_tokens"] == 2
    assert set(rows["decode"]["batch_rel_l2"]) == {"left", "right"}
    assert max(rows["decode"]["batch_rel_l2"].values()) <= min(rows["decode"]["bounds"])


def test_after_a_long_prompt_llamacpp_decodes_against_the_rows_it_compares(capsys, monkeypatch):
    from conftest import need

    need("llama_cpp")
    import gguf_models

    if gguf_models.converter_dir() is None:
        pytest.skip("llama.cpp's converter is not in the parity cache (scripts/install.sh puts it there)")
    gguf = gguf_models.gguf("llama", "f16")
    whole_code, whole = report_of(gguf, f"llamacpp:{gguf}", capsys, monkeypatch, long=False)
    rows_code, rows = report_of(gguf, f"llamacpp:{gguf}", capsys, monkeypatch, long=True)
    assert whole_code == rows_code == 0
    assert_same_decoding(whole, rows)
