"""Attention probabilities measured as each side makes them, against the reference's rebuilt, and stored in no
trace: the report is the one the stored probabilities give, passing and failing."""

import json

import pytest

from conftest import ROOT, TOKENS

pytest.importorskip("torch")

STORED = ("--no-stream-probabilities",)
STREAMED = ("--stream-probabilities",)


def report_of(model, candidate, capsys, *options, tokens=TOKENS):
    from parity.cli import main

    capsys.readouterr()
    code = main(["check", str(model), candidate, "--tokens", ",".join(map(str, tokens)), "--json", "-",
                 "--decode-steps", "0", *options])
    return code, json.loads(capsys.readouterr().out)


def comparable(report):
    """The report without what differs between two runs (timings, sources), and without the notes, which say
    how the probabilities were measured; each number held to 1e-9 of its value (a block's sums are added in
    another order than the whole tensor's: the last bits of a float64 sum may differ)."""
    return approximate({key: value for key, value in report.items()
                        if key not in ("reference", "candidate", "timestamp", "notes")})


def approximate(value):
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-9, abs=0.0, nan_ok=True)
    if isinstance(value, dict):
        return {key: approximate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [approximate(item) for item in value]
    return value


def probabilities(report) -> dict:
    return {result["name"]: result for result in report["checkpoints"] if result["name"].endswith(".attn_probs")}


def assert_same_report(stored, streamed):
    exact = {key: value for key, value in streamed.items() if key not in ("reference", "candidate", "timestamp",
                                                                          "notes")}
    assert exact == comparable(stored)
    assert any("measured as they were made" in note for note in streamed["notes"])
    assert not any("measured as they were made" in note for note in stored["notes"])


@pytest.mark.parametrize("factory, code", [("build", 0), ("rope_interleaved", 1), ("mask_off", 1)])
def test_a_port_streamed_gives_the_report_its_stored_probabilities_give(model_dirs, capsys, factory, code):
    """A from-scratch port (its probabilities recorded whole by its own module) against transformers."""
    candidate = f"{ROOT / 'examples' / 'scratch_llama.py'}:{factory}"
    stored_code, stored = report_of(model_dirs["llama"], candidate, capsys, *STORED)
    streamed_code, streamed = report_of(model_dirs["llama"], candidate, capsys, *STREAMED)
    assert stored_code == streamed_code == code
    assert probabilities(stored)
    assert_same_report(stored, streamed)


ROW_BLOCKED_PORT = """
import sys
sys.path.insert(0, {examples!r})
import scratch_llama


def build(path):
    return scratch_llama.row_blocked(path, rows=3)


def mask_off(path):
    return scratch_llama.row_blocked_mask_off(path, rows=3)
"""


@pytest.mark.parametrize("factory, code", [("build", 0), ("mask_off", 1)])
@pytest.mark.parametrize("spill_bytes", [None, 0])
def test_a_port_that_hands_its_probabilities_over_in_row_blocks_streamed_gives_the_stored_report(
        model_dirs, capsys, monkeypatch, tmp_path, factory, code, spill_bytes):
    """The from-scratch port computing attention 3 query rows at a time, each block given to its probe with
    `start=`: measured block by block as it makes them, or put together and stored, the same report; with
    spill_bytes=0 its trace is also written to the spill directory as it is made, not held."""
    from parity.commands.check import pipeline, spill

    if spill_bytes is not None:
        for module in (pipeline, spill):
            monkeypatch.setattr(module, "SPILL_BYTES", spill_bytes)
    port = tmp_path / "blocked_port.py"
    port.write_text(ROW_BLOCKED_PORT.format(examples=str(ROOT / "examples")))
    stored_code, stored = report_of(model_dirs["llama"], f"{port}:{factory}", capsys, *STORED)
    streamed_code, streamed = report_of(model_dirs["llama"], f"{port}:{factory}", capsys, *STREAMED)
    assert stored_code == streamed_code == code
    assert probabilities(stored)
    assert_same_report(stored, streamed)
    if factory == "mask_off":
        assert stored["first_divergence"]["checkpoint"] == "layers.0.attn_probs"
        assert any(diagnosis["cause"] == "causal_mask" for diagnosis in streamed["diagnoses"])


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3", "gpt2"])
def test_a_transformers_candidate_streamed_gives_the_report_its_stored_probabilities_give(model_dirs, capsys,
                                                                                          family):
    """The candidate's eager attention in row blocks (forced small, on both runs: a block's matmul rounds a
    float32 output in another order), each block measured as it is made."""
    from parity.capture.hf import attention

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "ROW_BLOCK_BYTES", 1024)
        stored_code, stored = report_of(model_dirs[family], str(model_dirs[family]), capsys, *STORED)
        streamed_code, streamed = report_of(model_dirs[family], str(model_dirs[family]), capsys, *STREAMED)
    assert stored_code == streamed_code == 0
    assert probabilities(stored)
    assert_same_report(stored, streamed)


@pytest.mark.parametrize("factory", [None, "norm_eps"])
def test_llamacpp_in_micro_batches_streamed_gives_the_report_its_stored_probabilities_give(capsys, monkeypatch,
                                                                                           factory):
    """llama.cpp's probabilities arrive a micro-batch of query rows at a time, each measured against the
    reference's same rows rebuilt, and the calibration run's likewise."""
    from conftest import need

    need("llama_cpp")
    import gguf_models

    from parity.capture.llamacpp import runner

    if gguf_models.converter_dir() is None:
        pytest.skip("llama.cpp's converter is not in the parity cache (scripts/install.sh puts it there)")
    monkeypatch.setattr(runner, "UBATCH", 4)
    gguf = gguf_models.gguf("llama", "f16", **({"rms_norm_eps": 1e-2} if factory else {}))
    reference = gguf_models.gguf("llama", "f16")
    stored_code, stored = report_of(reference, f"llamacpp:{gguf}", capsys, *STORED)
    streamed_code, streamed = report_of(reference, f"llamacpp:{gguf}", capsys, *STREAMED)
    assert stored_code == streamed_code == (1 if factory else 0)
    assert probabilities(stored)
    assert_same_report(stored, streamed)


def test_a_trace_file_candidate_has_its_stored_probabilities_measured_against_the_rebuilt_rows(model_dirs, capsys,
                                                                                              tmp_path):
    from parity.capture.hf.model import load_model
    from parity.core.trace import save_trace

    path = save_trace(load_model(model_dirs["llama"], dtype="float32").capture(TOKENS), tmp_path / "port.safetensors")
    stored_code, stored = report_of(model_dirs["llama"], str(path), capsys, *STORED)
    streamed_code, streamed = report_of(model_dirs["llama"], str(path), capsys, *STREAMED)
    assert stored_code == streamed_code == 0
    assert_same_report(stored, streamed)


def test_streaming_needs_a_tolerance_known_before_the_rows_go(model_dirs, capsys):
    from parity.cli import main

    code = main(["check", str(model_dirs["llama"]), str(model_dirs["llama"]), "--tokens", "1,2,3", "--no-calibrate",
                 "--stream-probabilities", "--decode-steps", "0"])
    assert code == 2
    assert "--stream-probabilities measures each block against a tolerance known before it goes" in \
        capsys.readouterr().err


def test_the_probabilities_are_streamed_by_themselves_once_they_would_take_gigabytes():
    import types

    from parity.commands.check.probabilities import STORED_PROBABILITIES_BYTES, probabilities_bytes

    config = types.SimpleNamespace(num_hidden_layers=30, num_attention_heads=9)
    model = types.SimpleNamespace(model=types.SimpleNamespace(config=config))
    assert probabilities_bytes(model, 1024, "float64", None) < STORED_PROBABILITIES_BYTES   # stored: diagnosed
    assert probabilities_bytes(model, 2048, "float64", None) > STORED_PROBABILITIES_BYTES
    assert probabilities_bytes(model, 8192, "float64", "layers.3.*") == 9 * 8192 ** 2 * 16
