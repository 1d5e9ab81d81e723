"""One protocol that turns a CANDIDATE spec into a candidate: its backends, its factories, its stdout."""

import ast
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TOKENS
from parity.capture.candidate import CandidateContext, TraceRequest, open_candidate, parse_candidate
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


def backend(spec) -> str:
    return parse_candidate(spec).backend.backend


def test_each_kind_of_spec_is_told_apart(model_dirs, reference_traces, tmp_path):
    from parity.core.trace import save_trace

    trace = save_trace(reference_traces["llama"], tmp_path / "t.safetensors")
    assert backend("http://127.0.0.1:8080") == "server"
    assert backend("llamacpp:missing.gguf") == "llamacpp"
    assert backend(str(trace)) == "trace"
    assert backend(str(model_dirs["llama"])) == "hf"
    assert backend("my_port.py:build") == "torch" and backend("package.module:build") == "torch"
    assert backend("dist:2:my_port.py:build") == "distributed"
    with pytest.raises(OptionError, match="neither an existing trace"):
        parse_candidate("no_such_thing")


def test_a_command_refuses_a_candidate_that_cannot_give_what_it_needs_and_says_which_can(reference_traces,
                                                                                        tmp_path):
    from parity.core.trace import save_trace

    trace = save_trace(reference_traces["llama"], tmp_path / "t.safetensors")
    with pytest.raises(OptionError, match="is a trace file, which gives no logits for any token ids; this command "
                                          "takes llamacpp:FILE.gguf, dist:N:FILE.py:FACTORY, FILE.onnx, a model directory or .gguf, "
                                          "FILE.py:FACTORY"):
        with open_candidate(str(trace), needs=("logits",)):
            pass


def test_the_backends_order_does_not_depend_on_what_was_imported_first():
    """The order claims are tried in (and a refusal lists them in) is BUILTIN_BACKENDS', whichever backend's
    module some earlier code imported first: under pytest-xdist a test imported the distributed one early."""
    import subprocess
    import sys

    from parity.capture.candidate import BUILTIN_BACKENDS

    orders = set()
    for module in (None, *BUILTIN_BACKENDS):
        early = f"import {module}; " if module else ""
        run = subprocess.run([sys.executable, "-c", f"{early}from parity.capture.candidate import backends; "
                              "print(list(backends()))"], capture_output=True, text=True, check=True)
        orders.add(run.stdout.strip())
    assert orders == {"['server', 'llamacpp', 'distributed', 'shards', 'onnx', 'trace', 'hf', 'torch']"}


def test_a_factory_and_a_model_directory_give_the_same_logits_and_the_factory_prints_to_stderr(
        model_dirs, factories, capsys):
    directory = str(model_dirs["llama"])
    with open_candidate(f"{factories}:build", CandidateContext(model_path=directory)) as built:
        rows = built.logits(TOKENS)
        assert built.backend == "torch" and built.precision == "float32" and built.taps()  # mapped from its structure
    with open_candidate(directory) as loaded:
        assert loaded.backend == "hf" and loaded.hf.family == "llama" and loaded.taps()
        np.testing.assert_allclose(loaded.logits(TOKENS), rows, rtol=1e-6, atol=1e-6)
        trace = loaded.trace(TOKENS, TraceRequest(checkpoints="logits"))
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


def test_a_file_named_as_an_imported_library_does_not_replace_it(tmp_path):
    """A port called kernels.py beside transformers 5.25's `kernels`: registered under its stem it would have
    handed the library's users the port. `json` stands for any library imported already."""
    import json
    import sys

    (tmp_path / "json.py").write_text("def build():\n    return 'the port'\n")
    assert load_factory(f"{tmp_path / 'json.py'}:build")() == "the port"
    assert sys.modules["json"] is json and sys.modules["parity_file_json"].build() == "the port"


def test_capture_never_imports_a_command():
    commands = {"parity.commands.check.pipeline", "parity.commands.generate", "parity.commands.tokens", "parity.cli", "parity.commands.repro", "parity.sanity",
                "parity.kernel", "parity.commands.bench", "parity.commands.gradients"}
    for path in sorted((ROOT / "src" / "parity" / "capture").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not commands & set(names), f"{Path(path).name} imports a command: {names}"


def test_commands_ask_what_a_candidate_supports_never_which_backend_it_is():
    backend_modules = {f"parity.capture.{folder}.candidate" for folder in ("torch", "hf", "llamacpp", "server",
                                                                             "tracefile")}
    for path in sorted((ROOT / "src" / "parity" / "commands").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in backend_modules, f"{path.name} imports a backend: {node.module}"
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute):
                assert node.left.attr != "backend", f"{path.name}:{node.lineno} asks a candidate its backend"
