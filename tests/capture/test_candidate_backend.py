"""A new candidate backend is one class and one registration: parity check runs it, asking only what it supports.

The backend here serves a saved trace with every tensor multiplied by a factor (`scaled:FACTOR:TRACE`): it
gives checkpoints and nothing else, so the check compares them and reports each other check as not checked,
in the words of the protocol.
"""

import json

import pytest

from conftest import TOKENS
from parity.capture.candidate import (
    Candidate,
    CandidateContext,
    TraceRequest,
    backends,
    open_candidate,
    parse_candidate,
    register_candidate,
)
from parity.core.trace import Trace, load_trace, save_trace


@register_candidate
class ScaledTrace(Candidate):
    backend = "scaled-trace"
    written = "scaled:FACTOR:TRACE"
    capabilities = frozenset({"trace"})
    claim_order = 5

    def __init__(self, spec: str, trace: Trace, factor: float) -> None:
        super().__init__(spec)
        self.loaded, self.factor = trace, factor
        self.precision = None

    @classmethod
    def claims(cls, spec) -> bool:
        return isinstance(spec, str) and spec.startswith("scaled:")

    @classmethod
    def open(cls, spec: str, context: CandidateContext) -> "ScaledTrace":
        _, factor, path = spec.split(":", 2)
        return cls(spec, load_trace(path), float(factor))

    def trace(self, tokens, request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        tensors = {name: self.loaded[name] * self.factor for name in self.loaded.names}
        return Trace(tensors=tensors, metadata={"tokens": list(tokens)})


@pytest.fixture(scope="module")
def saved_reference(reference_traces, tmp_path_factory):
    return save_trace(reference_traces["llama"], tmp_path_factory.mktemp("scaled") / "reference.safetensors")


def test_the_backend_is_found_by_its_claim_and_refused_when_registered_twice(saved_reference):
    assert parse_candidate(f"scaled:1:{saved_reference}").backend is ScaledTrace
    assert list(backends())[0] == "scaled-trace"   # its claim_order puts it first
    with pytest.raises(ValueError, match="registered already"):
        register_candidate(type("Another", (ScaledTrace,), {}))


def test_what_it_cannot_do_is_said_by_the_protocol(saved_reference):
    with open_candidate(f"scaled:1:{saved_reference}") as candidate:
        assert candidate.supports("trace") is None
        assert candidate.supports("decode") == ("the candidate is scaled:FACTOR:TRACE: it gives no token-by-token "
                                                "decoding through its own cache (llamacpp:FILE.gguf, FILE.onnx, a "
                                                "model directory or .gguf, FILE.py:FACTORY do)")
    with pytest.raises(Exception, match="gives no logits for any token ids"):
        with open_candidate(f"scaled:1:{saved_reference}", needs=("logits",)):
            pass


@pytest.mark.parametrize("factor, code", [(1.0, 0), (1.5, 1)])
def test_parity_check_runs_the_new_backend(model_dirs, saved_reference, factor, code, capsys):
    from parity.cli import main

    capsys.readouterr()
    exit_code = main(["check", str(model_dirs["llama"]), f"scaled:{factor}:{saved_reference}",
                      "--tokens", ",".join(map(str, TOKENS)), "--json", "-"])
    report = json.loads(capsys.readouterr().out)
    assert exit_code == code
    not_checked = {item["check"]: item["reason"] for item in report["not_checked"]}
    assert not_checked["decode"].startswith("the candidate is scaled:FACTOR:TRACE: it gives no logits for any "
                                            "token ids (llamacpp:FILE.gguf")
    if code:
        assert report["first_divergence"]["checkpoint"] == "embed"
