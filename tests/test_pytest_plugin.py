"""The pytest plugin, in use: a test file written here and run by pytest in a subprocess."""

import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import entry_points

import pytest

from conftest import ROOT, TOKENS

TEST_FILE = textwrap.dedent('''
    import os

    import numpy as np

    from parity.core.trace import make_trace
    from parity.testing import assert_parity

    RNG = np.random.default_rng(0)
    TENSORS = {"embed": RNG.standard_normal((4, 8)), "layers.0.mlp_out": RNG.standard_normal((4, 8)),
               "layers.0.out": RNG.standard_normal((4, 8)), "logits": RNG.standard_normal((4, 16))}
    META = {"producer": "written test", "dtype": "float32", "tokens": [1, 2, 3, 4]}
    BROKEN = {**TENSORS, "layers.0.mlp_out": TENSORS["layers.0.mlp_out"] * 3.0}


    def test_passes():
        assert_parity(make_trace(TENSORS, META), make_trace(TENSORS, META))


    def test_fails():
        assert_parity(make_trace(TENSORS, META), make_trace(BROKEN, META))


    def test_compares_results():
        from parity.core.compare import compare

        expected = compare(make_trace(TENSORS, META), make_trace(TENSORS, META))
        assert compare(make_trace(TENSORS, META), make_trace(BROKEN, META)) == expected
''')

FIXTURE_FILE = textwrap.dedent('''
    import os

    MODEL = os.environ["PARITY_TEST_MODEL"]
    TOKENS = [int(t) for t in os.environ["PARITY_TEST_TOKENS"].split(",")]


    def test_first(parity_reference):
        assert parity_reference(MODEL, tokens=TOKENS).tokens == TOKENS


    def test_second(parity_reference):
        parity_reference(MODEL, tokens=TOKENS)
        assert parity_reference.captures == 1
''')


def plugin_registered() -> bool:
    return any(ep.value == "parity.pytest_plugin" for ep in entry_points(group="pytest11"))


def run_pytest(directory, *args, env=None):
    """pytest on `directory`'s test file; loads the plugin by name where the installed package does not yet."""
    plugin = [] if plugin_registered() else ["-p", "parity.pytest_plugin"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-q", *map(str, args)],
                          cwd=directory, capture_output=True, text=True, env=environment, timeout=600)


def test_the_entry_point_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"parity": "parity.pytest_plugin"}


def test_failing_assert_parity_writes_its_html_report(tmp_path):
    (tmp_path / "test_port.py").write_text(TEST_FILE)
    reports = tmp_path / "reports"
    result = run_pytest(tmp_path, "--parity-report", reports)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 passed" in output and "2 failed" in output
    # the assertion message is the console summary
    assert "FAIL  " in output and "first divergence at layers.0.mlp_out" in output and "Mismatched elements" in output
    # pytest_assertrepr_compare: a result compared with == explains itself
    assert "left: failed" in output and "right: passed" in output
    written = sorted(path.name for path in reports.iterdir())
    assert written == ["test_port.py_test_fails.html"]
    page = (reports / written[0]).read_text()
    assert '<header class="verdict fail">' in page and "layers.0.mlp_out" in page
    assert "parity reports" in output and str(reports / written[0]) in output
    # a second run does not replace the report unless told to
    again = run_pytest(tmp_path, "--parity-report", reports, "-k", "test_fails")
    assert "exists; pass --parity-report-force to replace it" in again.stdout


def test_no_report_without_the_option_and_a_file_is_refused(tmp_path):
    (tmp_path / "test_port.py").write_text(TEST_FILE)
    result = run_pytest(tmp_path)
    assert result.returncode == 1 and "parity reports" not in result.stdout
    (tmp_path / "taken").write_text("")
    refused = run_pytest(tmp_path, "--parity-report", tmp_path / "taken")
    assert refused.returncode == 4 and "is a file; give a directory" in refused.stderr


@pytest.mark.slow
def test_the_session_fixture_captures_a_reference_once(tmp_path, model_dirs):
    (tmp_path / "test_fixture.py").write_text(FIXTURE_FILE)
    result = run_pytest(tmp_path, env={"PARITY_TEST_MODEL": str(model_dirs["llama"]),
                                       "PARITY_TEST_TOKENS": ",".join(map(str, TOKENS))})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
