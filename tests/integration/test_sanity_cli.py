"""`parity sanity` end to end: one line or a table, the JSON file, exit codes 0, 1 and 2."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from conftest import ROOT  # noqa: E402

FACTORY = """
import sys
sys.path.insert(0, {examples!r})
from llama_course import Bugs, course_config, default_model

def build():
    config = course_config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=2, vocab_size=128, max_position_embeddings=256)
    return default_model(Bugs({bugs}), config=config)
"""


def parity(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def factory(tmp_path, bugs: str = "") -> str:
    path = tmp_path / "my_model.py"
    path.write_text(FACTORY.format(examples=str(ROOT / "examples"), bugs=bugs))
    return f"{path}:build"


@pytest.mark.slow
def test_a_correct_model_passes_in_one_line_and_writes_the_json(tmp_path):
    out = tmp_path / "results.json"
    result = parity("sanity", factory(tmp_path), "--json", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"All 11 tests passed - results in {out}"
    data = json.loads(out.read_text())
    assert data["summary"]["overall_status"] == "PASSED" and data["summary"]["total_tests"] == 11
    assert [entry["name"] for entry in data["results"]][:3] == ["structure", "norm", "rope"]


@pytest.mark.slow
def test_a_planted_bug_fails_with_exit_1_and_the_table_names_it(tmp_path):
    result = parity("sanity", factory(tmp_path, 'gqa="tile"'), "-v")
    assert result.returncode == 1, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line[:1] in "✓✗-" and len(line.split()) > 2}
    assert "failed" in rows["attention"] and "GQA head mapping" in rows["attention"]
    assert "passed" in rows["norm"] and "passed" in rows["kv_cache"]
    assert "tests failed (attention, decoder_layer, forward, loss, gradients)" in result.stdout


def test_unusable_input_exits_2_in_one_line(tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}")
    for args, words in ((("no_such_file.py:build",), "no such file"),
                        ((factory(tmp_path), "--json", out), "exists; choose another --json path or pass --force"),
                        ((factory(tmp_path), "--rtol", "1e-3"), "--rtol was given without --atol")):
        result = parity("sanity", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and words in result.stderr.strip().splitlines()[-1], result.stderr
