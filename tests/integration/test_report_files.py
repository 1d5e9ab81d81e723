"""--html, --junit and --markdown on compare, check, generate and tokens, end to end."""

import re
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("transformers")

from browser import colours, screenshot  # noqa: E402
from conftest import ROOT, TOKENS  # noqa: E402
from test_cli import TOKEN_ARG, assert_unusable, parity  # noqa: E402


def reports(directory):
    return {option: directory / name for option, name in
            (("--html", "report.html"), ("--junit", "report.xml"), ("--markdown", "report.md"))}


def options(paths):
    return [item for option, path in paths.items() for item in (option, path)]


@pytest.mark.slow
def test_check_writes_all_three_and_the_page_renders_in_chromium(model_dirs, tmp_path):
    factory = tmp_path / "buggy.py"
    factory.write_text("import llama_port\n"
                       "def build(path):\n"
                       "    return llama_port.build(path, llama_port.Bugs(causal_mask=False))\n")
    paths = reports(tmp_path)
    result = parity("check", model_dirs["llama"], f"{factory}:build", "--tokens", TOKEN_ARG, *options(paths),
                    cwd=ROOT / "examples")
    assert result.returncode == 1, result.stderr
    page = paths["--html"].read_text()
    assert "first divergence at <b>layers.0.attn_probs</b>" in page and "<b>causal_mask</b>" in page
    assert 'id="decode"' in page and 'id="greedy"' in page   # a torch candidate decodes
    suite = ET.parse(paths["--junit"]).getroot().find("testsuite")
    failing = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert (failing[0].get("classname"), failing[0].get("name")) == ("layers.0", "attn_probs")
    assert {case.get("classname") for case in suite.iter("testcase")} >= {"layers.0", "layers.1", "model", "decode",
                                                                          "generation"}
    summary = paths["--markdown"].read_text()
    assert summary.startswith("### ❌ parity FAIL") and "**causal\\_mask** at `layers.0.attn_probs`" in summary
    assert screenshot(paths["--html"], tmp_path / "check.png") == []
    distinct, inked = colours(tmp_path / "check.png")
    assert distinct > 50 and inked > 0.05


@pytest.mark.slow
def test_compare_writes_reports_of_a_passing_pair(model_dirs, tmp_path):
    trace = tmp_path / "reference.safetensors"
    assert parity("capture", model_dirs["llama"], "--tokens", TOKEN_ARG, "-o", trace).returncode == 0
    paths = reports(tmp_path)
    result = parity("compare", trace, trace, *options(paths))
    assert result.returncode == 0, result.stderr
    assert '<header class="verdict pass">' in paths["--html"].read_text()
    assert ET.parse(paths["--junit"]).getroot().get("failures") == "0"
    assert re.match(r"### ✅ parity PASS: (\d+)/\1 checkpoints within tolerance", paths["--markdown"].read_text())


def test_report_paths_are_checked_before_the_run(model_dirs, tmp_path):
    taken = tmp_path / "taken.html"
    taken.write_text("keep me")
    # the model is never loaded: the error is about the output, not about the (missing) candidate
    result = parity("check", model_dirs["llama"], tmp_path / "missing.py:build", "--tokens", TOKEN_ARG, "--html", taken)
    assert_unusable(result, f"{taken} exists; choose another --html path or pass --force")
    assert taken.read_text() == "keep me"
    assert_unusable(parity("compare", "a", "b", "--junit", tmp_path / "same", "--markdown", tmp_path / "same"),
                    "--junit and --markdown both write")
    assert_unusable(parity("compare", "a", "b", "--html", tmp_path), "is a directory")


@pytest.mark.slow
def test_tokens_and_generate_write_reports(model_dirs, tmp_path):
    paths = reports(tmp_path / "tokens")
    result = parity("tokens", model_dirs["llama"], "--prompt", "w1 w2 w3", "--candidate-ids", "0,1,2,3,4", *options(paths))
    assert result.returncode == 1, result.stderr
    assert "tokenize identically" in paths["--html"].read_text()
    assert ET.parse(paths["--junit"]).getroot().find("testsuite").get("name") == "parity.tokenizer"
    paths = reports(tmp_path / "generate")
    result = parity("generate", model_dirs["qwen3"], ROOT / "examples/llama_port.py:build", "--tokens", TOKEN_ARG,
                    "-n", "4", *options(paths))
    assert result.returncode == 0, result.stderr
    assert 'id="teacher-forced"' in paths["--html"].read_text()
    names = [case.get("name") for case in ET.parse(paths["--junit"]).getroot().iter("testcase")]
    assert names == ["greedy", "teacher_forced"]
    assert paths["--markdown"].read_text().startswith("### ✅ parity PASS: generation")
