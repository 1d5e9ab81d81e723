"""One place that turns a CANDIDATE spec into a source: its kinds, its factories, its stdout."""

import ast
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TOKENS
from parity.capture.candidates import kind_of, open_candidate
from parity.capture.torch.factory import load_factory
from parity.core.errors import OptionError

FACTORIES = '''import transformers
print("building the model")            # chatty user code, at import and in the factory

def build(path):
    print("loading", path)
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()

def not_a_module():
    return 42

def broken():
    raise ValueError("bad config")
'''


@pytest.fixture()
def factories(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(FACTORIES)
    return path


def test_each_kind_of_spec_is_told_apart(model_dirs, reference_traces, tmp_path):
    from parity.core.trace import save_trace

    trace = save_trace(reference_traces["llama"], tmp_path / "t.safetensors")
    assert kind_of("http://127.0.0.1:8080") == "server"
    assert kind_of("llamacpp:missing.gguf") == "llamacpp"
    assert kind_of(str(trace)) == "trace"
    assert kind_of(str(model_dirs["llama"])) == "model"
    assert kind_of("my_port.py:build") == "factory" and kind_of("package.module:build") == "factory"
    with pytest.raises(OptionError, match="neither an existing trace"):
        kind_of("no_such_thing")


def test_a_command_refuses_a_kind_it_cannot_use_and_says_which_it_takes(reference_traces, tmp_path):
    from parity.core.trace import save_trace

    trace = save_trace(reference_traces["llama"], tmp_path / "t.safetensors")
    with pytest.raises(OptionError, match="is a trace file; this command takes llamacpp:FILE.gguf"):
        with open_candidate(str(trace), accept=("llamacpp", "factory")):
            pass


def test_a_factory_and_a_model_directory_give_the_same_logits_and_the_factory_prints_to_stderr(
        model_dirs, factories, capsys):
    directory = str(model_dirs["llama"])
    with open_candidate(f"{factories}:build", model_path=directory) as built:
        rows = built.logits(TOKENS)
        assert built.kind == "factory" and built.precision == "float32" and built.taps()  # mapped from its structure
    with open_candidate(directory) as loaded:
        assert loaded.kind == "model" and loaded.hf.family == "llama" and loaded.taps()
        np.testing.assert_allclose(loaded.logits(TOKENS), rows, rtol=1e-6, atol=1e-6)
        trace = loaded.trace(TOKENS, checkpoints="logits")
    np.testing.assert_allclose(trace["logits"], rows, rtol=1e-5, atol=1e-5)
    captured = capsys.readouterr()
    assert captured.out == "" and "building the model" in captured.err and "loading" in captured.err


@pytest.mark.parametrize("name, message", [
    ("not_a_module", "returned int, not a torch.nn.Module"),
    ("broken", r"failed: ValueError: bad config \(at .*factories.py:12\)"),
    ("missing", "has no function 'missing'"),
])
def test_a_bad_factory_is_one_clear_error(factories, name, message):
    with pytest.raises(OptionError, match=message):
        with open_candidate(f"{factories}:{name}"):
            pass


def test_load_factory_returns_the_function_itself(factories):
    assert load_factory(f"{factories}:broken").__name__ == "broken"
    with pytest.raises(OptionError, match="not FILE.py:NAME"):
        load_factory("no_colon")


def test_capture_never_imports_a_command():
    commands = {"parity.commands.check.run", "parity.commands.generate", "parity.commands.tokens", "parity.cli", "parity.commands.repro", "parity.sanity",
                "parity.kernel", "parity.commands.bench", "parity.commands.gradients"}
    for path in sorted((ROOT / "src" / "parity" / "capture").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not commands & set(names), f"{Path(path).name} imports a command: {names}"
