"""A port in numpy alone writes a trace directory in its natural layouts (q/k/v [T, H, hd], probabilities
[H, T, T]): it passes in float32 and float16 as it is, a layout is one note, and real causes still show."""

import json

import pytest

from conftest import ROOT, TOKENS
from test_cli import TOKEN_ARG, parity

PORT = ROOT / "examples" / "numpy_llama.py"


@pytest.fixture(scope="module")
def traces(model_dirs, tmp_path_factory):
    import numpy_llama

    directory = tmp_path_factory.mktemp("numpy_port")
    written = {}
    for name, dtype, bug in (("float32", "float32", None), ("float16", "float16", None),
                             ("rope", "float32", "rope_interleaved"), ("swap", "float32", "mlp_operands_swapped")):
        written[name] = directory / name
        numpy_llama.main([str(model_dirs["llama"]), str(written[name]), "--tokens", TOKEN_ARG, "--dtype", dtype]
                         + (["--bug", bug] if bug else []))
    return written


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_the_correct_port_passes_in_its_own_layouts(model_dirs, traces, precision):
    result = parity("check", model_dirs["llama"], traces[precision], "--tokens", TOKEN_ARG)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("adapted (layout)") == 1 and "layout_permuted" not in result.stdout
    assert "3x the noise of " + precision in " ".join(result.stdout.split())     # calibrated by itself


def test_a_rope_pair_layout_bug_is_named_through_the_adapted_layout(model_dirs, traces):
    result = parity("check", model_dirs["llama"], traces["rope"], "--tokens", TOKEN_ARG, "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    assert len(report["first_divergence"]["per_position"]) == len(TOKENS)
    assert [d["cause"] for d in report["diagnoses"]][:1] == ["rope_layout"]


def test_an_mlp_operand_swap_is_named_through_the_adapted_layout(model_dirs, traces):
    result = parity("check", model_dirs["llama"], traces["swap"], "--tokens", TOKEN_ARG, "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.mlp_act"
    [wiring] = [d for d in report["diagnoses"] if d["checkpoint"] == "layers.0.mlp_act"]
    assert "gate and up operands are exchanged" in wiring["message"]


def test_strict_layout_fails_the_same_trace(model_dirs, traces):
    result = parity("check", model_dirs["llama"], traces["float32"], "--tokens", TOKEN_ARG, "--strict", "layout")
    assert result.returncode == 1 and "not adapted (--strict layout)" in " ".join(result.stdout.split())


def test_a_float16_trace_compared_with_a_reference_parity_captured_is_calibrated(model_dirs, traces, tmp_path):
    reference = tmp_path / "reference.safetensors"
    assert parity("capture", model_dirs["llama"], "--tokens", TOKEN_ARG, "-o", reference).returncode == 0
    result = parity("compare", reference, traces["float16"], "--json", "-")
    assert result.returncode == 0, result.stdout[-2000:]
    report = json.loads(result.stdout)
    assert report["calibrated"] and report["checkpoints"][0]["tolerance"]["noise_rel_l2"] is not None


def test_a_float32_trace_compared_by_itself_says_how_its_calibration_rounds(model_dirs, traces, tmp_path):
    reference = tmp_path / "reference.safetensors"
    assert parity("capture", model_dirs["llama"], "--tokens", TOKEN_ARG, "--dtype", "float64",
                  "-o", reference).returncode == 0
    result = parity("compare", reference, traces["float32"])
    assert result.returncode == 0, result.stdout[-2000:]
    assert "3x the noise of float32 as ports round it" in " ".join(result.stdout.split())


SHOWING = f'''import sys

import numpy as np

sys.path.insert(0, {str(PORT.parent)!r})
import numpy_llama


def operands_swapped(path):          # the port with its MLP's operands exchanged, showing its tensors
    return numpy_llama.decoder(path, bug="mlp_operands_swapped", showing=True)


def unnamed(path):                   # a tensor returned under a name of its own
    step = numpy_llama.showing(path)
    return lambda input_ids: {{**step(input_ids)[0], "hidden": np.zeros(3)}}


def no_logits(path):
    step = numpy_llama.showing(path)
    return lambda input_ids: {{name: value for name, value in step(input_ids)[0].items() if name != "logits"}}


def not_numbers(path):
    step = numpy_llama.showing(path)
    return lambda input_ids: {{**step(input_ids)[0], "layers.0.out": "a text"}}


def undeclared(path):                # [T, H, hd] tensors with no layout said: as many tokens as heads is ambiguous
    step = numpy_llama.showing(path)
    function = lambda input_ids: step(input_ids)[0]
    function.parity_dtype = "float32"
    return function
'''


@pytest.fixture(scope="module")
def showing(tmp_path_factory):
    factories = tmp_path_factory.mktemp("showing") / "showing.py"
    factories.write_text(SHOWING)
    return factories


def test_a_function_returning_its_tensors_is_compared_at_each_and_decoded(model_dirs):
    """The port handed over as a function that returns every checkpoint by name beside its logits: its layers
    are compared (through Probes, in numpy's layouts), and its decoding through its own cache."""
    result = parity("check", model_dirs["llama"], f"{PORT}:showing", "--tokens", TOKEN_ARG, "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    status = {entry["name"]: entry["status"] for entry in report["checkpoints"]}
    assert report["summary"]["passed"] == len(status) > 40 and status["layers.1.attn_probs"] == "pass"
    assert report["decode"]["passed"] and report["decode"]["cache"]["passed"]
    assert "layers" not in {entry["check"] for entry in report["not_checked"]}


def test_a_function_showing_its_tensors_is_diagnosed_where_it_parts(model_dirs, showing):
    result = parity("check", model_dirs["llama"], f"{showing}:operands_swapped", "--tokens", TOKEN_ARG, "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.mlp_act"
    [wiring] = [d for d in report["diagnoses"] if d["checkpoint"] == "layers.0.mlp_act"]
    assert "gate and up operands are exchanged" in wiring["message"]


@pytest.mark.parametrize("factory, tokens, message", [
    ("unnamed", TOKEN_ARG, "returned 'hidden', which is not a checkpoint name"),
    ("no_logits", TOKEN_ARG, 'returned a mapping without "logits"'),
    ("not_numbers", TOKEN_ARG, "returned layers.0.out as str, not a tensor or an array of numbers"),
    ("undeclared", "1,2,3,4", "reads as [T, H, hd] and as [H, T, hd] alike"),
])
def test_a_mapping_that_cannot_be_read_is_one_line(model_dirs, showing, factory, tokens, message):
    result = parity("check", model_dirs["llama"], f"{showing}:{factory}", "--tokens", tokens)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_function_declaring_its_layout_is_read_at_as_many_tokens_as_heads(model_dirs):
    result = parity("check", model_dirs["llama"], f"{PORT}:showing", "--tokens", "1,2,3,4", "--decode-steps", "0")
    assert result.returncode == 0 and "PASS  51/51" in result.stdout, result.stdout[-2000:] + result.stderr[-1000:]
