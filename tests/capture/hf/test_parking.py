"""A model's weights parked in a file and mapped back (capture/hf/parking.py): the same model, bit for bit, whose
weights leave the process's resident memory at rest() and come back when a pass reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tiny_models
from residency import resident_bytes

torch = pytest.importorskip("torch")

FAULT_AROUND_BYTES = 64 << 10   # Linux's default /sys/kernel/debug/fault_around_bytes


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_parked_model_computes_what_it_computed(family, tmp_path):
    from parity.capture.hf.model import load_model

    model = load_model(tiny_models.save(family, tmp_path / family), dtype="float64")
    tokens = list(range(3, 20))
    before = model.capture(tokens)
    model.park(tmp_path / "weights.bin")
    assert all(parameter.dtype == torch.float64 for parameter in model.model.parameters())
    after = model.capture(tokens)
    model.rest()
    again = model.capture(tokens)
    assert before.names == after.names == again.names
    for name in before.names:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        np.testing.assert_array_equal(again[name], before[name], err_msg=name)


def test_a_pass_holds_a_modules_weights_only_while_it_runs(tmp_path):
    from parity.capture.hf.model import load_model

    # up_proj 1 MiB: wider than the kernel's fault-around window, which maps a faulting page's cached neighbours
    # (up to 64 KiB) and so can bring back a page or two at the edges of a weight handed back.
    model = load_model(tiny_models.save("llama", tmp_path / "llama", intermediate_size=2048), dtype="float64")
    layer = model.model.model.layers[0].mlp.up_proj
    during = []
    layer.register_forward_hook(lambda *_: during.append(resident_bytes(layer.weight.detach().numpy())))
    model.park(tmp_path / "weights.bin")
    weight = layer.weight.detach().numpy()                           # (intermediate, hidden), mapped
    assert weight.nbytes >= 8 * 4096
    assert resident_bytes(weight) == 0                               # parked: nothing resident
    model.capture([1, 2, 3])
    assert during and during[0] >= weight.nbytes // 2                # the pass read it back while the module ran
    assert resident_bytes(weight) <= 2 * FAULT_AROUND_BYTES          # and handed it back when the module returned
    weight.sum()                                                     # read outside a forward: resident until rest()
    assert resident_bytes(weight) >= weight.nbytes // 2
    model.rest()
    assert resident_bytes(weight) == 0
