"""parity.testing.assert_parity: traces, paths, modules and models, as an assertion."""

import pytest

import report_cases
from conftest import TOKENS
from parity.core.errors import OptionError
from parity.core.trace import make_trace, save_trace
from parity.testing import ParityAssertionError, ReferenceCache, assert_parity, report_path, write_report

META = {"producer": "test", "dtype": "float32", "tokens": list(range(6))}


def test_equal_traces_pass_and_return_the_comparison():
    trace = make_trace(report_cases.tensors(), META)
    comparison = assert_parity(trace, trace)
    assert comparison and comparison.passed_count == len(trace.tensors)


def test_a_divergence_raises_an_assertion_error_carrying_the_console_summary(tmp_path):
    reference = save_trace(make_trace(report_cases.tensors(), META), tmp_path / "reference.safetensors")
    bad = report_cases.tensors()
    bad["layers.1.mlp_out"] = bad["layers.1.mlp_out"] * 2.0
    candidate = save_trace(make_trace(bad, META), tmp_path / "candidate.safetensors")
    with pytest.raises(AssertionError) as caught:
        assert_parity(str(reference), candidate)          # paths, as str or Path
    assert isinstance(caught.value, ParityAssertionError) and not caught.value.comparison
    message = str(caught.value)
    assert "FAIL" in message and "first divergence at layers.1.mlp_out" in message
    assert "Mismatched elements: 96 / 96 (100.0%)" in message and "Greatest absolute difference" in message
    assert "diagnosis scale_factor at layers.1.mlp_out" in message
    with pytest.raises(AssertionError, match="^custom$"):
        assert_parity(reference, candidate, msg="custom")
    with pytest.raises(AssertionError, match="^prefix: "):
        assert_parity(reference, candidate, msg=lambda text: "prefix: " + text)
    assert assert_parity(reference, candidate, atol=10.0, rtol=10.0)   # loose enough to pass


def test_calibration_from_a_low_precision_reference_trace():
    reference = report_cases.tensors()
    noisy = {name: value * 1.001 for name, value in reference.items()}
    with pytest.raises(ParityAssertionError):
        assert_parity(make_trace(reference, META), make_trace(noisy, META))   # fixed float32 tolerances
    comparison = assert_parity(make_trace(reference, META), make_trace(noisy, META), calibrate=make_trace(noisy, META))
    assert comparison.calibrated


def test_unusable_arguments_are_parity_errors_not_assertions():
    trace = make_trace(report_cases.tensors(), META)
    with pytest.raises(OptionError, match="atol"):
        assert_parity(trace, trace, atol=1e-3)
    with pytest.raises(OptionError, match="prompt and tokens are for a model reference"):
        assert_parity(trace, trace, tokens=[1, 2])
    with pytest.raises(OptionError, match="not int"):
        assert_parity(trace, 3)
    with pytest.raises(OptionError, match="needs a model as the reference"):
        assert_parity(trace, "port.py:build")


def test_report_path_is_a_safe_file_name(tmp_path):
    path = report_path(tmp_path, "tests/test_x.py::test_y[a/b c]")
    assert path.parent == tmp_path and path.name == "tests_test_x.py_test_y_a_b_c.html"


def test_write_report_replaces_a_report_only_when_told(tmp_path):
    comparison = report_cases.calibrated_failure()
    assert write_report(comparison, tmp_path, "t::x") == f"t::x: {tmp_path / 't_x.html'}"
    assert "exists; pass --parity-report-force" in write_report(comparison, tmp_path, "t::x")
    assert write_report(comparison, tmp_path, "t::x", overwrite=True) == f"t::x: {tmp_path / 't_x.html'}"


# --- with real transformers models ------------------------------------------------------


def test_a_model_and_a_module_as_check_does(model_dirs):
    import llama_port

    directory = model_dirs["llama"]
    assert assert_parity(directory, llama_port.build(directory), tokens=TOKENS, decode_steps=0)
    buggy = llama_port.build(directory, llama_port.Bugs(causal_mask=False))
    with pytest.raises(ParityAssertionError) as caught:
        assert_parity(directory, buggy, tokens=TOKENS, decode_steps=0)
    message = str(caught.value)
    assert "first divergence at layers.0.attn_probs" in message and "diagnosis causal_mask" in message


def test_a_reference_trace_captured_once_and_a_module(model_dirs):
    import llama_port

    directory = model_dirs["llama"]
    references = ReferenceCache()
    reference = references(directory, tokens=TOKENS)
    assert references(directory, tokens=TOKENS) is reference and references.captures == 1
    assert assert_parity(reference, llama_port.build(directory))
    with pytest.raises(ParityAssertionError, match="first divergence at layers.0"):
        assert_parity(reference, llama_port.build(directory, llama_port.Bugs(gqa_order="tile")))


def test_a_function_of_token_ids_is_checked_on_its_logits_alone(model_dirs):
    """A binding's or a numpy port's forward, handed over as a function (was: refused, "not function")."""
    from pathlib import Path

    import numpy as np

    import numpy_llama

    directory = model_dirs["llama"]
    config, weights = numpy_llama.load(Path(directory))

    def port(ids, bug=None):
        return numpy_llama.forward(config, weights, np.asarray(ids)[0].tolist(), np.float32, bug)["logits"]

    result = assert_parity(directory, port, tokens=TOKENS, decode_steps=0)
    assert result.layers_hidden and [r.name for r in result.checkpoints] == ["logits"]
    assert repr(result).endswith("logits alone>")
    with pytest.raises(ParityAssertionError, match="first divergence at logits"):
        assert_parity(directory, lambda ids: port(ids, "rope_interleaved"), tokens=TOKENS, decode_steps=0)
    with pytest.raises(OptionError, match="needs a model as the reference"):
        assert_parity(make_trace({"logits": np.zeros((2, 3))}, {"tokens": [1, 2]}), port)
