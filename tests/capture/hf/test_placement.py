"""Models larger than the machine: the reference through accelerate's big-model inference."""

import numpy as np
import pytest

from parity.capture.hf.placement import Placement, placement_from_options
from parity.core.errors import OptionError

from conftest import TOKENS


def test_max_memory_is_parsed_into_accelerate_terms_and_implies_auto():
    placement = placement_from_options(None, "cpu=2GiB, 0=20gb", "/tmp/offload")
    assert placement.device_map == "auto"
    assert placement.from_pretrained_kwargs() == {"device_map": "auto", "max_memory": {"cpu": "2GiB", 0: "20GB"},
                                                  "offload_folder": "/tmp/offload", "offload_state_dict": True}
    assert not Placement() and Placement().from_pretrained_kwargs() == {}


@pytest.mark.parametrize("device_map, max_memory, message", [
    ("everywhere", None, "not a strategy"),
    (None, "cpu", "DEVICE=SIZE"),
    (None, "gpu=1GB", "must be cpu"),
    (None, "cpu=-1GB", "must be positive"),
    (None, "cpu=lots", "must be positive"),
])
def test_bad_placements_are_refused_with_how_to_fix(device_map, max_memory, message):
    with pytest.raises(OptionError, match=message):
        placement_from_options(device_map, max_memory, None)


def test_an_offloaded_reference_captures_every_checkpoint_with_the_same_values(model_dirs, reference_traces, tmp_path):
    """A memory cap far below the model's size puts its layers on the disk; hooks still see every module."""
    from parity.capture.hf.model import load_model

    pytest.importorskip("accelerate")
    offload = tmp_path / "offload"
    placement = placement_from_options(None, "cpu=20KB", str(offload))
    model = load_model(model_dirs["llama"], placement=placement)
    devices = set(model.model.hf_device_map.values())
    assert "disk" in devices, f"the cap did not force offload to disk: {devices}"
    assert any(parameter.device.type == "meta" for parameter in model.model.parameters())  # read from disk per use
    trace = model.capture(TOKENS)
    reference = reference_traces["llama"]
    assert trace.names == reference.names
    for name in reference.names:
        np.testing.assert_allclose(trace[name], reference[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_capture_and_check_take_the_placement_options(model_dirs, tmp_path):
    from parity.cli import main

    model = str(model_dirs["llama"])
    placement = ["--max-memory", "cpu=20KB", "--offload-dir", str(tmp_path / "offload")]
    output = tmp_path / "reference.safetensors"
    assert main(["capture", model, "--tokens", "1,2,3,4", "-o", str(output), *placement]) == 0 and output.exists()
    assert main(["check", model, str(output), "--tokens", "1,2,3,4", *placement]) == 0
    assert main(["capture", model, "--tokens", "1,2", "-o", str(tmp_path / "x.safetensors"),
                 "--max-memory", "cpu:1GB"]) == 2
