"""Hostile traces that cannot be committed, each through `parity compare` in a subprocess
limited to 1 GiB of address space and 60 s: a sparse 3 GB file, 1 GiB zip bombs, FIFOs,
/dev/zero behind a manifest or a tensor, links out of the trace directory and into /proc.

Each must end in bounded time and memory with one line and exit 2 (`bad-*`), or with
a result (`odd-*`), never a traceback or a hang.
"""

import pytest

import trace_corpus
from limited_run import run_parity

ADDRESS_SPACE_MB = 1024   # parity compare on the small reference needs ~300 MB of address space
PEAK_RSS_MB = 400         # the traces declare up to 3 GB; none of it may be read


@pytest.fixture(scope="module")
def special(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    reference = trace_corpus.write_reference(directory)
    return reference, trace_corpus.write_special(directory)


@pytest.mark.slow
def test_every_hostile_case_ends_in_bounded_time_and_memory_with_one_line(special):
    reference, cases = special
    assert len(cases) >= 15
    for case in cases:
        run = run_parity(["compare", str(reference), str(case)], address_space_mb=ADDRESS_SPACE_MB)
        assert run.code is not None, f"{case.name} hung"
        assert "Traceback" not in run.err, f"{case.name}: {run.err}"
        assert run.peak_rss_mb < PEAK_RSS_MB, f"{case.name}: {run!r}"
        if case.name.startswith("bad-"):
            assert run.code == 2 and len(run.err.splitlines()) == 1, f"{case.name}: {run!r}"
            assert run.err.startswith("parity: error: ") and case.name in run.err
        else:
            assert run.code in (0, 1) and run.err == "", f"{case.name}: {run!r}"


def test_nothing_outside_the_trace_directory_is_read(special):
    reference, cases = special
    for case in cases:
        if "symlink" in case.name and "inside" not in case.name:
            run = run_parity(["compare", str(reference), str(case)])
            assert run.code == 2 and "outside the trace directory" in run.err, run


def test_the_fuzzing_script_runs_and_finds_nothing(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_traces.py"
    result = subprocess.run([sys.executable, str(script), "--count", "40", "--seed", "3", "--crashes",
                             str(tmp_path / "crashes")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "40 inputs" in result.stdout
    assert "failures: tracebacks 0, hangs 0, multi-line 0, noisy 0, outside 0" in result.stdout, result.stdout
