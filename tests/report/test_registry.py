"""The renderer registry: a format is one registration, a second renderer is refused, formats load lazily."""

import dataclasses
import subprocess
import sys

import pytest

import report_cases
from parity.core.results import Comparison, SanityReport, TestResult
from parity.report import registry
from parity.testing import is_result

SANITY = SanityReport(results=(TestResult("norm", "passed", "2 norm modules match"),), timestamp="now",
                      environment={}, test_config={})


def test_a_new_format_is_one_registration(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._RENDERERS, "tiny", {})   # forgotten after the test

    @registry.register(Comparison, "tiny")
    def tiny(comparison: Comparison, *, mark: str = "*") -> str:
        return f"{mark} {comparison.verdict} {comparison.failed_count}/{len(comparison.checkpoints)}\n"

    comparison = report_cases.calibrated_failure()
    assert registry.render(comparison, "tiny") == "* fail 20/67\n"
    assert registry.render(comparison, "tiny", mark="!") == "! fail 20/67\n"
    assert registry.write(comparison, "tiny", tmp_path / "report.tiny").read_text() == "* fail 20/67\n"


def test_a_second_renderer_for_the_same_type_and_format_is_refused(monkeypatch):
    monkeypatch.setitem(registry._RENDERERS, "tiny", {})
    registry.register(Comparison, "tiny")(lambda comparison: "one\n")
    with pytest.raises(ValueError, match="a tiny renderer for Comparison is already registered"):
        registry.register(Comparison, "tiny")(lambda comparison: "two\n")
    registry.renderer(Comparison, "markdown")   # the built-in ones are refused the same way
    with pytest.raises(ValueError, match="a markdown renderer for Comparison is already registered"):
        registry.register(Comparison, "markdown")(lambda comparison: "")
    assert registry.render(report_cases.calibrated_failure(), "markdown").startswith("### ❌ parity FAIL")


def test_an_unknown_format_or_result_says_what_there_is():
    with pytest.raises(ValueError, match="no report format 'sarif': the formats are console, json, html"):
        registry.render(SANITY, "sarif")
    with pytest.raises(TypeError, match="no html report for SanityReport .*renders Comparison"):
        registry.render(SANITY, "html")


def test_every_result_type_renders_on_the_console_and_as_json():
    import json

    assert registry.render(SANITY, "console") == "All 1 tests passed\n"
    assert json.loads(registry.render(SANITY, "json"))["summary"]["overall_status"] == "PASSED"
    assert "FAIL  20/67 checkpoints outside tolerance" in registry.render(report_cases.calibrated_failure(), "console")


def test_a_subclass_renders_as_its_base():
    class Annotated(Comparison):
        pass

    comparison = report_cases.calibrated_failure()
    annotated = Annotated(**{name: getattr(comparison, name) for name in Comparison.__dataclass_fields__})
    assert registry.render(annotated, "markdown") == registry.render(comparison, "markdown")


def test_show_prints_the_console_report_at_100_columns_when_piped(capsys):
    comparison = report_cases.calibrated_failure()
    registry.show(comparison)
    assert capsys.readouterr().out == registry.render(comparison, "console", width=100)


def test_a_result_is_what_some_renderer_renders():
    assert is_result(report_cases.calibrated_failure()) and is_result(SANITY) and is_result(report_cases.decode()) is False
    assert not is_result("a string") and not is_result(None)


def test_a_console_report_imports_no_other_format(tmp_path):
    """`parity compare` prints to the console: the HTML, JUnit, Markdown and JSON code stays unimported."""
    code = f"""
import sys
import numpy as np
from parity.core.trace import make_trace, save_trace
from parity.cli import main
tensors = {{"embed": np.ones((3, 4)), "logits": np.arange(12.0).reshape(3, 4)}}
save_trace(make_trace(tensors), r"{tmp_path / 'a.safetensors'}")
save_trace(make_trace({{**tensors, "logits": -tensors["logits"]}}), r"{tmp_path / 'b.safetensors'}")
code = main(["compare", r"{tmp_path / 'a.safetensors'}", r"{tmp_path / 'b.safetensors'}"])
print("MODULES", code, sorted(name for name in sys.modules if name.startswith("parity.report")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    line = next(line for line in result.stdout.splitlines() if line.startswith("MODULES")), result.stderr
    assert "MODULES 1 " in line[0] and "parity.report.console" in line[0], line
    for other in ("html", "junit", "markdown", "json'"):
        assert f"parity.report.{other}" not in line[0], line


def test_a_token_level_comparison_has_one_headline_in_every_format():
    import html

    import numpy as np

    from parity.core.sequence import CandidateTokens, ReferenceTokens, compare_sequences

    vocab = ("A", " b", " c", " d", " e")
    logits = np.zeros((4, len(vocab)))
    for row, piece in enumerate([" b", " c", " e", " e"]):
        logits[row, vocab.index(piece)] = 3.0
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    pieces = ("A", " b", " c", " d")
    reference = ReferenceTokens(pieces, (0, 1, 3, 5), logprobs, vocab)
    rows = (None, {" b": 0.0, " e": -3.0}, {" c": 0.0, " e": -3.0}, {" d": 0.0, " e": -3.0})
    candidate = CandidateTokens("A b c d", pieces, (0, 1, 3, 5), (None,) * 4, rows, first_generated=2)
    comparison = compare_sequences(reference, candidate)
    headline = comparison.headline
    assert "prompt: top-1 agrees at 1/1 positions; greedy continuation: 1/2 tokens" in headline
    assert headline in registry.render(comparison, "console", width=400)
    for format in ("markdown", "json"):
        assert headline in registry.render(comparison, format), format
    assert html.escape(headline, quote=True) in registry.render(comparison, "html")


def test_markdown_and_junit_notify_no_one_and_cannot_be_reordered():
    from parity.core.results import Diagnosis
    from parity.core.trace import make_trace
    import numpy as np

    from parity.core.compare import compare

    reference = {"embed": np.ones((2, 4), np.float32)}
    comparison = compare(make_trace(reference), make_trace({"embed": np.full((2, 4), 2.0, np.float32)}))
    hostile = "ask @octocat or @acme/reviewers \u202eevil\u202c now"
    comparison = dataclasses.replace(comparison, diagnoses=(Diagnosis("no_known_cause", "embed", hostile),))
    markdown, junit = registry.render(comparison, "markdown"), registry.render(comparison, "junit")
    assert "`@octocat`" in markdown and "`@acme/reviewers`" in markdown and "\u202e" not in markdown
    assert "\uff20octocat" in junit and "@octocat" not in junit and "\u202e" not in junit
