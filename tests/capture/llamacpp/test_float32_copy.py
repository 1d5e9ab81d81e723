"""The float32 copy llama.cpp's numerics run in: each weight cast as it is copied, the parked original's pages
handed back as the copy reads them."""

import numpy as np
import pytest

import tiny_models
from residency import resident_bytes

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("handed_back", [True, False])
def test_the_copy_is_the_cast_and_a_parked_originals_pages_go_back_as_it_reads(handed_back, tmp_path, monkeypatch):
    import parity.capture.llamacpp.candidate as candidate
    from parity.capture.hf.model import load_model

    model = load_model(tiny_models.save("llama", tmp_path / "llama"), dtype="float64")
    model.park(tmp_path / "weights.bin")
    calls = []

    def read():
        calls.append(1)
        model.rest()

    monkeypatch.setattr(candidate, "_READ_BYTES_HELD", 1)          # hand back after every tensor
    copy = candidate.float32_copy(model.model, read=read if handed_back else None)
    weight = model.model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    assert (resident_bytes(weight) == 0) == handed_back             # before the checks below read it again
    originals = dict(model.model.named_parameters())
    assert (len(calls) >= len(originals) - 1) == handed_back
    for name, parameter in copy.named_parameters():
        assert parameter.dtype == torch.float32
        np.testing.assert_array_equal(parameter.detach().numpy(), originals[name].detach().float().numpy())
