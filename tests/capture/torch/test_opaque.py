"""A function of token ids as a module (capture/torch/opaque.py): what it returns taken as logits, its precision
read off them where they are 16-bit, and a module with nothing to map checked on its logits alone."""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.candidate import TorchCandidate  # noqa: E402
from parity.capture.torch.module import trace_module  # noqa: E402
from parity.capture.torch.opaque import OpaqueModel, returned_precision  # noqa: E402
from parity.core.errors import CaptureError  # noqa: E402

VOCAB = 7


def _logits(ids):                  # (1, T) -> (T, V): a deterministic function of the ids
    positions = np.arange(VOCAB, dtype=np.float32)
    return np.stack([np.sin(positions * (token + 1)) for token in np.asarray(ids)[0]])


@pytest.mark.parametrize("returned", [
    lambda ids: _logits(ids),                                             # a numpy (T, V)
    lambda ids: torch.from_numpy(_logits(ids))[None],                     # a tensor (1, T, V)
    lambda ids: SimpleNamespace(logits=torch.from_numpy(_logits(ids))),   # a transformers-like output
    lambda ids: (torch.from_numpy(_logits(ids)), None),                   # (logits, cache)
])
def test_what_a_function_returns_is_traced_as_the_logits(returned):
    trace = trace_module(OpaqueModel(returned, "port.py:build"), [3, 1, 4], taps=())
    assert trace.names == ["logits"]
    np.testing.assert_array_equal(trace.tensors["logits"], _logits(np.array([[3, 1, 4]])))
    assert trace.metadata["producer"] == "torch:port.py:build"


def test_what_is_not_logits_is_one_line():
    with pytest.raises(CaptureError, match="returned str, not logits"):
        OpaqueModel(lambda ids: "text", "port.py:build")(torch.zeros((1, 2), dtype=torch.int64))
    with pytest.raises(CaptureError, match="returned ndarray, not logits"):   # integers: token ids, not logits
        OpaqueModel(lambda ids: np.asarray(ids), "port.py:build")(torch.zeros((1, 2), dtype=torch.int64))


def test_precision_is_read_off_16_bit_logits_and_never_guessed_from_float32():
    def returning(dtype):
        return OpaqueModel(lambda ids: torch.zeros((1, ids.shape[1], VOCAB), dtype=dtype), "f")

    assert returned_precision(returning(torch.bfloat16)) == "bfloat16"
    assert returned_precision(returning(torch.float16)) == "float16"
    assert returned_precision(returning(torch.float32)) is None      # zeros: nothing says

    def widened(narrow):
        values = torch.randn(1, 2, VOCAB, generator=torch.Generator().manual_seed(0))
        return OpaqueModel(lambda ids: values.to(narrow).to(torch.float32), "f")

    assert returned_precision(widened(torch.bfloat16)) == "bfloat16"   # a 16-bit computation widened at the end
    assert returned_precision(widened(torch.float16)) == "float16"
    assert returned_precision(widened(torch.float32)) is None
    assert returned_precision(OpaqueModel(lambda ids: 1 / 0, "f")) is None     # its check says what fails

    def declared(ids):
        return _logits(ids)

    declared.parity_dtype = "bfloat16"
    assert TorchCandidate("f", OpaqueModel(declared, "f")).precision == "bfloat16"


def test_a_module_parity_cannot_map_is_hidden_and_one_with_taps_is_not():
    class Blob(torch.nn.Module):
        def forward(self, input_ids):
            return torch.from_numpy(_logits(input_ids))

    candidate = TorchCandidate("blob.py:build", Blob())
    assert "holds no modules and no parameters" in candidate.hidden()
    assert candidate.taps() == ()
    assert candidate.hidden(taps={"head": "logits"}) is None
    assert "function of token ids" in TorchCandidate("f", OpaqueModel(_logits, "f")).hidden()
    assert "no floating-point parameters" in candidate.supports("gradients")


def test_a_function_taking_a_cache_is_called_with_it_and_keeps_its_signature():
    import inspect

    from parity.capture.torch.incremental import call_with_cache, decode_support

    def forward(input_ids, positions=None, cache=None):       # a port's decoder: (logits (T, V), cache)
        cache = (cache or []) + np.asarray(input_ids)[0].tolist()
        return _logits(np.array([cache[-len(np.asarray(input_ids)[0]):]])) * len(cache), cache

    model = OpaqueModel(forward, "port.py:decoder")
    assert list(inspect.signature(model.forward).parameters) == ["input_ids", "positions", "cache"]
    logits, cache = call_with_cache(model, torch.tensor([[3, 1]]), None)
    assert logits.shape == (1, 2, VOCAB) and cache == [3, 1]                 # (T, V) made (1, T, V)
    assert decode_support(model, [3, 1, 4]) is None
    assert TorchCandidate("f", model).supports("decode") is None
    assert "takes no cache" in TorchCandidate("f", OpaqueModel(_logits, "f")).supports("decode")
