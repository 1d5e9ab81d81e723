"""A reference trace too large to hold is written to a file as it is made and read back a tensor at a time:
the check's report is the same as with the trace held in memory."""

import json

import pytest

from conftest import TOKENS

pytest.importorskip("torch")


def report_of(model_dir, candidate, capsys, monkeypatch, spill_bytes):
    from parity.cli import main
    from parity.commands.check import pipeline, spill

    for module in (pipeline, spill):   # calibration reads spill's when it runs
        monkeypatch.setattr(module, "SPILL_BYTES", spill_bytes)
    capsys.readouterr()
    code = main(["check", str(model_dir), candidate, "--tokens", ",".join(map(str, TOKENS)), "--json", "-",
                 "--decode-steps", "2"])
    report = json.loads(capsys.readouterr().out)
    return code, report


def comparable(report):
    """The report without what differs between two runs of the same check (timings, the trace's source)."""
    return {key: value for key, value in report.items() if key not in ("reference", "candidate", "timestamp")}


@pytest.mark.parametrize("factory, code", [("build", 0), ("rope_interleaved", 1)])
def test_a_spilled_reference_gives_the_report_a_held_one_gives(model_dirs, capsys, monkeypatch, factory, code):
    from conftest import ROOT

    candidate = f"{ROOT / 'examples' / 'scratch_llama.py'}:{factory}"
    held_code, held = report_of(model_dirs["llama"], candidate, capsys, monkeypatch, spill_bytes=1 << 60)
    spilled_code, spilled = report_of(model_dirs["llama"], candidate, capsys, monkeypatch, spill_bytes=0)
    assert held_code == spilled_code == code
    assert comparable(spilled) == comparable(held)


def test_the_estimate_grows_with_the_square_of_the_tokens_and_with_the_layers():
    import types

    from parity.commands.check.spill import reference_trace_bytes

    config = types.SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, hidden_size=576,
                                   intermediate_size=1536)
    model = types.SimpleNamespace(model=types.SimpleNamespace(config=config))
    at_1024 = reference_trace_bytes(model, 1024, "float64")
    assert 2.2 * 2**30 < at_1024 < 8 * 2**30          # SmolLM2 at T=1,024: gigabytes, so it is spilled
    assert reference_trace_bytes(model, 12, "float64") < 2**30   # the default prompt is held


@pytest.mark.parametrize("outtype, factory", [("f16", None), ("f16", "norm_eps")])
def test_llamacpp_writing_its_trace_layer_by_layer_gives_the_report_a_held_trace_gives(capsys, monkeypatch, outtype,
                                                                                        factory):
    """llama.cpp's trace written to the spill directory as the pass runs, and the reference's and the calibration
    run's too, against all three held: the same report, passing and failing."""
    from conftest import need

    need("llama_cpp")
    import gguf_models

    if gguf_models.converter_dir() is None:
        pytest.skip("llama.cpp's converter is not in the parity cache (scripts/install.sh puts it there)")
    overrides = {"rms_norm_eps": 1e-2} if factory == "norm_eps" else {}
    gguf = gguf_models.gguf("llama", outtype, **overrides)
    reference = gguf_models.gguf("llama", outtype)          # the unchanged model, in transformers
    held_code, held = report_of(reference, f"llamacpp:{gguf}", capsys, monkeypatch, spill_bytes=1 << 60)
    spilled_code, spilled = report_of(reference, f"llamacpp:{gguf}", capsys, monkeypatch, spill_bytes=0)
    assert held_code == spilled_code == (1 if factory else 0)
    assert comparable(spilled) == comparable(held)


def test_a_check_whose_traces_would_not_fit_on_the_disk_is_refused_before_it_runs(tmp_path):
    import shutil

    from parity.commands.check.spill import require_room
    from parity.core.errors import OptionError

    free = shutil.disk_usage(tmp_path).free
    require_room(str(tmp_path), free // 2, 0, 1024)                      # room: nothing said
    with pytest.raises(OptionError, match=r"writes about \d+ GiB of traces .* free: point PARITY_SPILL_DIR at a "
                                          r"disk with room, give fewer tokens, or leave out the attention "
                                          r"probabilities \(\d+ GiB of it: --checkpoints '\*,!\*.attn_probs'\)"):
        require_room(str(tmp_path), 2 * free, free, 8192)


def test_the_probabilities_left_out_shrink_the_estimate_to_what_grows_with_the_tokens():
    import types

    from parity.commands.check.spill import reference_trace_bytes

    config = types.SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   hidden_size=576, intermediate_size=1536, vocab_size=49152)
    model = types.SimpleNamespace(model=types.SimpleNamespace(config=config))
    whole, without = (reference_trace_bytes(model, 8192, "float64", checkpoints)
                      for checkpoints in (None, "*,!*.attn_probs"))
    per_token = 10 * 576 + 4 * 576 + 4 * 192 + 3 * 1536
    assert without == (30 * 8192 * per_token + 8192 * 49152) * 8 and whole == without + 30 * 9 * 8192 ** 2 * 8


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3"])
def test_the_estimate_is_close_to_the_trace_a_capture_writes(family, tmp_path):
    """Not far under what is written (a check must not run out of disk) nor far over (it must not be refused
    for want of room it has)."""
    import tiny_models

    from parity.capture.hf.model import load_model
    from parity.commands.check.spill import reference_trace_bytes

    model = load_model(tiny_models.save(family, tmp_path / family), dtype="float64")
    tokens = list(range(3, 67))
    for checkpoints in (None, "*,!*.attn_probs"):
        path = tmp_path / "trace.safetensors"
        model.capture_to_file(tokens, path, checkpoints=checkpoints, raw=False, overwrite=True)
        written, estimate = path.stat().st_size, reference_trace_bytes(model, len(tokens), "float64", checkpoints)
        assert 0.9 * written <= estimate <= 1.5 * written, (checkpoints, estimate, written)
