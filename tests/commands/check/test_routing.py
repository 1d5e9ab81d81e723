"""A bfloat16 MoE whose routing flips at a near tie, checked with its reference held, spilled to disk, and with the
attention probabilities streamed: each runs the reference again routed as the candidate, and all three give the
same report."""

import json

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def near_tie_model(tmp_path_factory):
    directory = tiny_models.save_near_tie_moe(tmp_path_factory.mktemp("ernie4_5_moe"))
    if directory is None:
        pytest.skip(f"transformers {transformers.__version__} has no ERNIE-4.5-MoE")
    factory = directory / "bfloat16.py"
    factory.write_text(tiny_models.BFLOAT16_FACTORY)   # sdpa: the candidate records no probabilities (streamed or
                                                       # not, the reference's are rebuilt from the rerouted run)
    return directory, f"{factory}:load"


def report_of(model, capsys, monkeypatch, *options, spill_bytes=1 << 60):
    from parity.cli import main
    from parity.commands.check import pipeline, spill

    for module in (pipeline, spill):
        monkeypatch.setattr(module, "SPILL_BYTES", spill_bytes)
    capsys.readouterr()
    directory, candidate = model
    code = main(["check", str(directory), candidate, "--tokens", tiny_models.NEAR_TIE_TOKENS, "--decode-steps", "0",
                 "--json", "-", *options])
    return code, json.loads(capsys.readouterr().out)


def verdicts(report):
    return report["verdict"], [(c["name"], c["status"]) for c in report["checkpoints"]], \
        [note for note in report["notes"] if "routed as the candidate" in note]


def test_held_spilled_and_streamed_checks_follow_the_flip_alike(near_tie_model, capsys, monkeypatch):
    held_code, held = report_of(near_tie_model, capsys, monkeypatch)
    if not verdicts(held)[2]:
        pytest.skip(f"transformers {transformers.__version__}'s ERNIE routes this model alike in both precisions")
    spilled_code, spilled = report_of(near_tie_model, capsys, monkeypatch, spill_bytes=0)
    streamed_code, streamed = report_of(near_tie_model, capsys, monkeypatch, "--stream-probabilities")
    assert held_code == spilled_code == streamed_code == 0
    assert verdicts(held) == verdicts(spilled) == verdicts(streamed)
    name, token, experts = tiny_models.NEAR_TIE_FLIP
    assert f"{name} token {token} to {experts}" in verdicts(held)[2][0]


def test_traces_compared_as_files_name_the_flip(near_tie_model, capsys, monkeypatch, tmp_path):
    """The rerouting is the check's: two traces of the unrerouted pair, compared, fail where the flip is, and the
    diagnosis says it is the candidate's precision's doing."""
    from parity.core.compare import CompareConfig
    from parity.core.trace import load_trace
    from parity.diagnose.compared import compare_and_diagnose

    code, report = report_of(near_tie_model, capsys, monkeypatch, "--save-traces", str(tmp_path))
    if not verdicts(report)[2]:
        pytest.skip(f"transformers {transformers.__version__}'s ERNIE routes this model alike in both precisions")
    from parity.capture.hf.model import load_model

    directory, _ = near_tie_model
    unrerouted = load_model(directory, dtype="float64").capture([int(t) for t in tiny_models.NEAR_TIE_TOKENS.split(",")])
    comparison = compare_and_diagnose(unrerouted, load_trace(tmp_path / "candidate.safetensors"),
                                      CompareConfig(noise=None))
    assert not comparison.passed
    name, token, _ = tiny_models.NEAR_TIE_FLIP
    assert not comparison.result(name).failed and "near-tie flip" in comparison.result(name).reason
    assert comparison.diagnoses[0].cause == "routing_near_tie", comparison.diagnoses
    assert f"the error begins at token {token}" in comparison.diagnoses[0].message


def test_a_router_that_cannot_be_made_to_route_otherwise_is_said_so_and_nothing_is_followed(
        near_tie_model, capsys, monkeypatch):
    from parity.capture.torch import routed

    code, report = report_of(near_tie_model, capsys, monkeypatch)
    if not verdicts(report)[2]:
        pytest.skip(f"transformers {transformers.__version__}'s ERNIE routes this model alike in both precisions")
    monkeypatch.setattr(routed, "reroute", lambda *args: None)   # as for a router of another output
    code, report = report_of(near_tie_model, capsys, monkeypatch)
    assert code == 1 and report["diagnoses"][0]["cause"] == "routing_near_tie", report["diagnoses"]
    assert not verdicts(report)[2]
    assert any("could not be made to route as it" in note for note in report["notes"]), report["notes"]
    assert "routed_as_candidate" not in report["reference"]
