import dataclasses

import report_cases
from parity.report import markdown


def test_summary_has_verdict_first_divergence_diagnosis_and_failing_checkpoints():
    comparison = dataclasses.replace(report_cases.calibrated_failure(), decode=report_cases.decode(),
                                     generation=report_cases.generation())
    text = markdown.render(comparison)
    lines = text.splitlines()
    assert lines[0] == "### ❌ parity FAIL: 20/67 checkpoints outside tolerance"
    row = next(line for line in lines if line.startswith("| first divergence |"))
    assert "`layers.2.mlp_act`" in row and "x the noise floor" in row and "96/96 elements mismatched" in row
    assert "- **activation\\_variant** at `layers.2.mlp_act`: the MLP activation differs" in text
    assert any(line.startswith("- decode: parts from the full pass at step 2") for line in lines)
    assert any(line.startswith("- greedy: first different token at step 2") for line in lines)
    assert "<details><summary>Failing checkpoints (20)</summary>" in text
    assert len(lines) < 60   # short enough for a pull-request comment


def test_passing_summary_is_short():
    comparison = report_cases.calibrated_failure()
    passing = dataclasses.replace(comparison, checkpoints=tuple(r for r in comparison.checkpoints if not r.failed),
                                  first_divergence=None, origin=None, diagnoses=(), notes=())
    text = markdown.render(passing)
    assert text.startswith("### ✅ parity PASS: 47/47 checkpoints within tolerance") and "<details>" not in text


def test_text_cannot_inject_html_or_break_a_table():
    text = markdown.render(report_cases.calibrated_failure(metadata={"producer": report_cases.HOSTILE}))
    candidate = next(line for line in text.splitlines() if line.startswith("| candidate |"))
    assert "<script>" not in text and "&lt;script&gt;" in candidate
    assert candidate.count(" | ") == 1 and "\\|" in candidate   # the pipe in the name is escaped
    assert "\x00" not in text and "\x1b" not in text


def test_other_results():
    assert markdown.render(report_cases.generation()).startswith("### ❌ parity FAIL: generation")
    assert "teacher-forced: mean KL" in markdown.render(report_cases.generation(failing=False))
