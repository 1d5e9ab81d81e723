"""A model's weights parked in a file and mapped back (capture/hf/parking.py): the same model, bit for bit, whose
weights leave the process's resident memory at rest() and come back when a pass reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tiny_models

torch = pytest.importorskip("torch")


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of the mapping holding `array` that count in this process's resident memory (/proc/self/smaps)."""
    address = array.ctypes.data
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:              # a mapping's first line: start-end perms ...
            start, end = (int(value, 16) for value in head.split("-"))
            inside = start <= address < end
        elif inside and head == "Rss:":
            return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the array")


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


def test_rest_hands_the_weights_pages_back_until_a_pass_reads_them(tmp_path):
    from parity.capture.hf.model import load_model

    model = load_model(tiny_models.save("llama", tmp_path / "llama"), dtype="float64")
    model.park(tmp_path / "weights.bin")
    weight = model.model.lm_head.weight.detach().numpy()            # (vocabulary, hidden), mapped
    assert weight.nbytes >= 8 * 4096
    assert resident_bytes(weight) == 0                               # parked: nothing resident
    model.capture([1, 2, 3])
    assert resident_bytes(weight) >= weight.nbytes // 2              # a pass read it back
    model.rest()
    assert resident_bytes(weight) == 0
