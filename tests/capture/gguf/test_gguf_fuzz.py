"""Fuzzed GGUF headers (tests/gguf_corpus.py): a few hundred through the reader, a few end to end.

The reader may only refuse (CaptureError, one line, no escape character) or accept; what it accepts,
gguf-py's own reader and the issue's rules must find sound (gguf_fuzz.unsound), or the reader let
through what transformers or llama.cpp would have read wrong. End to end (scripts/fuzz_surfaces.py,
run here on a few inputs; 10,000 by hand), each input runs in a fork through capture (transformers),
capture (llama.cpp) and tokens.
"""

import random

import pytest

import gguf_corpus
import gguf_fuzz
from parity.capture.gguf.header import read_header
from parity.core.errors import CaptureError

pytest.importorskip("gguf")
COUNT = 300


@pytest.fixture(scope="module")
def inputs():
    rng, base, seed = random.Random(24), gguf_corpus.seed(), gguf_corpus.SEED.read_bytes()
    return [gguf_fuzz.mutate_header(seed, rng, base) for _ in range(COUNT)]


def test_the_reader_refuses_in_one_line_or_accepts_only_sound_headers(inputs, tmp_path):
    accepted = 0
    for index, data in enumerate(inputs):
        path = tmp_path / f"case-{index}.gguf"
        path.write_bytes(data)
        try:
            read_header(path)
        except CaptureError as error:
            message = str(error)
            assert "\n" not in message and "\x1b" not in message and "; " in message, (index, message)
            continue
        accepted += 1
        assert gguf_fuzz.unsound(path) is None, (index, gguf_fuzz.unsound(path))
    assert 0 < accepted < COUNT   # the mutations reach both outcomes


@pytest.mark.slow
def test_the_fuzzing_script_runs_every_surface_and_finds_nothing(tmp_path):
    """A few inputs of each surface end to end, as scripts/fuzz_surfaces.py runs 10,000 (in a process of its
    own: its forks need a process whose OpenMP threads never ran)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("llama_cpp")
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, str(root / "scripts" / "fuzz_surfaces.py"), "--gguf", "12", "--server",
                             "40", "--chat", "40", "--user-code", "3", "--seed", "24", "--crashes",
                             str(tmp_path / "crashes")],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for surface in ("gguf", "server", "chat", "user-code"):
        assert f"{surface}: failures: silent 0, tracebacks 0, multi-line 0, hangs 0, aborts 0, outside 0" \
            in result.stdout, result.stdout
