"""A calibration run that routes tokens to other experts than the reference does is run again routed as the
reference: otherwise another expert's output sits in every noise floor after the flip, and a bug there passes."""

import json

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tiny_models  # noqa: E402

BUG = '''

def final_norm_scaled(path):
    model = load(path)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.1)
    return model
'''


@pytest.fixture(scope="module")
def flat_router(tmp_path_factory):
    directory = tiny_models.save_flat_router_moe(tmp_path_factory.mktemp("flat_router"))
    if directory is None:
        pytest.skip(f"transformers {transformers.__version__} has no ERNIE-4.5-MoE")
    factory = directory / "bfloat16.py"
    factory.write_text(tiny_models.BFLOAT16_EAGER_FACTORY + BUG)
    return directory, factory


def report_of(model, name, capsys):
    from parity.cli import main

    directory, factory = model
    capsys.readouterr()
    code = main(["check", str(directory), f"{factory}:{name}", "--tokens", tiny_models.FLAT_ROUTER_TOKENS,
                 "--decode-steps", "0", "--json", "-"])
    return code, json.loads(capsys.readouterr().out)


def test_a_correct_candidate_passes_and_the_floors_after_the_flips_stay_those_of_the_precision(flat_router, capsys):
    code, report = report_of(flat_router, "load", capsys)
    assert code == 0, report["diagnoses"]
    # without the calibration's flips followed its logits were held to rel_l2 0.31; 0.025 holds without a flip
    logits = next(c for c in report["checkpoints"] if c["name"] == "logits")
    assert logits["tolerance"]["max_rel_l2"] < 0.05


def test_a_bug_after_the_calibrations_flips_fails(flat_router, capsys):
    # the final norm's weights 10% larger: it passed as precision noise while the flips sat in the floors
    code, report = report_of(flat_router, "final_norm_scaled", capsys)
    assert code == 1 and report["first_divergence"]["checkpoint"] == "final_norm", report["diagnoses"]
    assert report["diagnoses"][0]["cause"] == "scale_factor"
