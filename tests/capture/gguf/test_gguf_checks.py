"""One validated reader in front of transformers and llama.cpp: every damaged or hostile GGUF of
issue 24 is one line and exit 2, in bounded time, whichever command reads it; llama.cpp's own abort
happens in a child process and is one line too."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gguf_corpus
from parity.capture.gguf.header import read_header
from parity.cli import main
from parity.core.errors import CaptureError

pytest.importorskip("gguf")
COMMITTED = json.loads(gguf_corpus.CASES.read_text())
BAD = sorted(name for name in COMMITTED if name.startswith("bad-"))   # refused by the header reader itself
SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gguf-corpus")
    expected = gguf_corpus.write_small(directory)
    expected.update(gguf_corpus.write_special(directory))
    return directory, expected


def test_the_committed_corpus_is_what_the_generator_writes():
    assert gguf_corpus.corpus_document() == COMMITTED   # `python tests/gguf_corpus.py` rewrites it


def test_the_seed_is_sound_and_round_trips():
    header = read_header(gguf_corpus.SEED)
    assert header.architecture == "llama" and len(header.tensors) == 12
    assert gguf_corpus.build(gguf_corpus.seed()) == gguf_corpus.SEED.read_bytes()


@pytest.mark.parametrize("name", BAD)
def test_each_damaged_header_is_one_line_naming_the_file_and_the_fault(corpus, name):
    directory, expected = corpus
    with pytest.raises(CaptureError) as raised:
        read_header(directory / name)
    message = str(raised.value)
    assert expected[name] in message and name in message, message
    assert "\n" not in message and "\x1b" not in message and "; " in message


@pytest.mark.parametrize("name", ["bad-fifo.gguf", "bad-directory.gguf", "bad-dev-zero.gguf",
                                  "bad-proc-environ.gguf"])
def test_only_regular_files_are_opened(corpus, name):
    directory, expected = corpus
    with pytest.raises(CaptureError, match=expected[name]):
        read_header(directory / name)


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_capture_refuses_each_in_one_line(corpus, tmp_path, capsys, name, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE", str(tmp_path / "cache"))
    directory, expected = corpus
    code = main(["capture", str(directory / name), "--tokens", "1,2,3", "-o", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("parity: error:")]
    assert code == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert expected[name] in errors[0] and "\x1b" not in err
    assert not (tmp_path / "out.safetensors").exists()


def _cli(*args, timeout_s=120):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    return result.returncode, result.stderr, time.monotonic() - started


@pytest.mark.parametrize("name", ["bad-fifo.gguf", "bad-dev-zero.gguf", "bad-zero-tensors.gguf", "bad-eps-nan.gguf"])
@pytest.mark.parametrize("command", ["capture", "capture-llamacpp", "tokens", "emulate"])
def test_no_command_hangs_or_aborts_on_a_hostile_gguf(corpus, tmp_path, name, command):
    if command in ("capture-llamacpp", "tokens"):
        pytest.importorskip("llama_cpp")
    directory, expected = corpus
    path = directory / name
    out = tmp_path / "out.safetensors"
    args = {"capture": ["capture", path, "--tokens", "1,2", "-o", out],
            "capture-llamacpp": ["capture", f"llamacpp:{path}", "--tokens", "1,2", "-o", out],
            "tokens": ["tokens", path, f"llamacpp:{path}", "--prompt", "hello"],
            "emulate": ["capture", path, "--tokens", "1,2", "-o", out, "--emulate", "llamacpp"]}[command]
    code, err, elapsed_s = _cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("parity: error:") and expected[name] in lines[-1], err
    assert "Traceback" not in err and "\x1b" not in err
    assert elapsed_s < 60


def test_a_gguf_missing_a_weight_is_refused_not_initialised_at_random(tmp_path, capsys, monkeypatch):
    """Packed as a writer would pack it, so the header is sound: transformers alone notices the
    absent weight, and parity refuses the model rather than compare against random numbers."""
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    base = gguf_corpus.seed()
    last = max(base.tensors, key=lambda tensor: tensor.offset)
    gguf = dataclasses.replace(base, tensors=[t for t in base.tensors if t is not last], data=base.data[:last.offset])
    path = tmp_path / "missing.gguf"
    path.write_bytes(gguf_corpus.build(gguf))
    read_header(path)
    code = main(["capture", str(path), "--tokens", "1,2", "-o", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "holds no weights for" in err and "at random" in err, err


# --- llama.cpp in a child process first --------------------------------------------------------


def test_llama_cpps_abort_is_one_line_and_parity_goes_on(monkeypatch, tmp_path):
    from parity.capture.llamacpp import probe

    monkeypatch.setattr(probe, "_CHILD", "import os, sys; sys.stderr.write('GGML_ASSERT(n > 0) failed\\n'); os.abort()")
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_corpus.SEED.read_bytes())
    with pytest.raises(CaptureError) as raised:
        probe.probe(path)
    message = str(raised.value)
    assert "llama.cpp aborted while loading it (signal 6" in message and "GGML_ASSERT(n > 0) failed" in message
    assert str(path) in message and "convert the model again" in message


def test_a_llama_cpp_load_that_never_ends_is_stopped(monkeypatch, tmp_path):
    from parity.capture.llamacpp import probe

    monkeypatch.setattr(probe, "_CHILD", "import time; time.sleep(60)")
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_corpus.SEED.read_bytes())
    started = time.monotonic()
    with pytest.raises(CaptureError, match="did not load it and decode one token within 2 s"):
        probe.probe(path, timeout_s=2)
    assert time.monotonic() - started < 10


def test_the_runner_probes_before_it_loads_and_remembers_a_file_that_loaded(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    from parity.capture.llamacpp import probe
    from parity.capture.llamacpp.runner import LlamaCppRunner

    monkeypatch.setenv("PARITY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_corpus.SEED.read_bytes())
    with LlamaCppRunner(path) as runner:
        assert runner.logits([1, 2, 3]).shape == (3, 96)
    assert len(list((tmp_path / "cache" / "dequantized" / "llamacpp-probed").iterdir())) == 1
    probe._PASSED.clear()
    monkeypatch.setattr(probe, "_CHILD", "import os; os.abort()")
    probe.probe(path)   # the content loaded before: not probed again
    assert signal.SIGABRT == 6
