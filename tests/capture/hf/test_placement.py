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


def test_an_offloaded_reference_records_its_weights_from_the_offload_map(model_dirs, tmp_path):
    """A parameter on the meta device is read from accelerate's map (--weights, and the weights a check reads
    after an unexplained divergence): it was a copy out of a meta tensor, which raises."""
    from parity.capture.hf.model import load_model

    pytest.importorskip("accelerate")
    placement = placement_from_options(None, "cpu=20KB", str(tmp_path / "offload"))
    offloaded = load_model(model_dirs["llama"], placement=placement).capture(TOKENS, weights=True, raw=False)
    resident = load_model(model_dirs["llama"]).capture(TOKENS, weights=True, raw=False)
    weights = [name for name in resident.names if name.endswith(".weight")]
    assert "layers.2.mlp_out.weight" in weights and "embed.weight" in weights and offloaded.names == resident.names
    for name in weights:
        np.testing.assert_array_equal(offloaded[name], resident[name], err_msg=name)


def test_capture_and_check_take_the_placement_options(model_dirs, tmp_path):
    from parity.cli import main

    model = str(model_dirs["llama"])
    placement = ["--max-memory", "cpu=20KB", "--offload-dir", str(tmp_path / "offload")]
    output = tmp_path / "reference.safetensors"
    assert main(["capture", model, "--tokens", "1,2,3,4", "-o", str(output), *placement]) == 0 and output.exists()
    assert main(["check", model, str(output), "--tokens", "1,2,3,4", *placement]) == 0
    assert main(["capture", model, "--tokens", "1,2", "-o", str(tmp_path / "x.safetensors"),
                 "--max-memory", "cpu:1GB"]) == 2


def test_each_load_offloads_into_a_folder_of_its_own_that_is_removed_when_the_process_ends(tmp_path):
    """The reference, its calibration copy and a model candidate never write over each other's offloaded weights,
    and a run leaves nothing behind in the user's --offload-dir."""
    import subprocess
    import sys

    offload = tmp_path / "offload"
    program = ("from parity.capture.hf.placement import placement_from_options, scratch_offload\n"
               f"placement = placement_from_options(None, 'cpu=1GiB', {str(offload)!r})\n"
               "first, second = scratch_offload(placement, 'float64'), scratch_offload(placement, 'bfloat16')\n"
               "import os\n"
               "assert os.path.isdir(first.offload_dir) and os.path.isdir(second.offload_dir)\n"
               "assert first.offload_dir != second.offload_dir and first.max_memory == placement.max_memory\n"
               "print(first.offload_dir); print(second.offload_dir)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folders = done.stdout.split()
    assert len(folders) == 2 and all(folder.startswith(str(offload)) for folder in folders)
    assert offload.is_dir() and list(offload.iterdir()) == []


def test_a_model_candidate_loads_within_the_memory_caps_the_reference_is_given():
    from parity.commands.check.pipeline import CheckOptions, _candidate_placement

    capped = placement_from_options(None, "cpu=20KB", "/tmp/offload")
    assert _candidate_placement(CheckOptions(model="m", candidate="c", placement=capped)) == capped
    on_gpu = placement_from_options("cuda:0", None, None)
    assert _candidate_placement(CheckOptions(model="m", candidate="c", placement=on_gpu)) is None
    assert _candidate_placement(CheckOptions(model="m", candidate="c", placement=on_gpu, on_device=True)) == on_gpu
    assert _candidate_placement(CheckOptions(model="m", candidate="c")) is None


def test_a_bfloat16_candidate_of_an_offloaded_model_is_checked_against_the_float64_reference(model_dirs, tmp_path):
    """The big-model path on a tiny model: reference in float64 and candidate in bfloat16, both read from disk
    module by module; the candidate's precision calibrates the check."""
    import json

    from parity.cli import main

    pytest.importorskip("accelerate")
    model, report = str(model_dirs["llama"]), tmp_path / "report.json"
    offload = tmp_path / "offload"
    assert main(["check", model, model, "--candidate-dtype", "bfloat16", "--tokens", "1,2,3,4,5,6",
                 "--max-memory", "cpu=20KB", "--offload-dir", str(offload), "--json", str(report)]) == 0
    document = json.loads(report.read_text())
    assert document["verdict"] == "pass" and document["calibrated"]
    assert document["candidate"]["dtype"] == "bfloat16" and document["reference"]["dtype"] == "float64"
    assert all(row["status"] == "pass" for row in document["checkpoints"]) and len(document["checkpoints"]) > 20


def test_candidate_dtype_is_refused_for_a_candidate_that_loads_no_model(model_dirs, reference_traces, tmp_path,
                                                                         capsys):
    from parity.cli import main
    from parity.core.trace import save_trace

    trace = save_trace(reference_traces["llama"], tmp_path / "candidate.safetensors")
    assert main(["check", str(model_dirs["llama"]), str(trace), "--candidate-dtype", "bfloat16",
                 "--tokens", "1,2,3"]) == 2
    assert "loading at a chosen precision (--candidate-dtype)" in capsys.readouterr().err


@pytest.mark.parametrize("family", __import__("tiny_models").ALL_FAMILIES)
def test_an_offloaded_reference_wider_than_its_files_is_exactly_a_wide_load(family, tmp_path):
    """bfloat16 files, a float64 reference offloaded to disk: loaded at the files' precision (nothing read at load)
    and widened, the trace is bit for bit the one a plain float64 load gives, every family (buffers included)."""
    import tiny_models

    from parity.capture.hf.model import load_model

    pytest.importorskip("accelerate")
    source = tiny_models.save(family, tmp_path / "float32")
    load_model(source, dtype="bfloat16").model.save_pretrained(tmp_path / "bfloat16")
    plain = load_model(tmp_path / "bfloat16", dtype="float64").capture(TOKENS)
    offloaded = load_model(tmp_path / "bfloat16", dtype="float64",
                           placement=placement_from_options(None, "cpu=20KB", str(tmp_path / "offload")))
    assert set(offloaded.model.hf_device_map.values()) == {"disk"}
    assert {parameter.dtype for parameter in offloaded.model.parameters()} == {__import__("torch").float64}
    trace = offloaded.capture(TOKENS)
    assert trace.names == plain.names
    for name in plain.names:
        np.testing.assert_array_equal(trace[name], plain[name], err_msg=name)


def test_the_files_precision_is_read_from_their_headers(model_dirs, tmp_path):
    from parity.capture.hf.widening import narrower, stored_float_dtype

    assert stored_float_dtype(model_dirs["llama"]) == "float32"
    assert stored_float_dtype(tmp_path) is None
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 16)
    assert stored_float_dtype(tmp_path) is None
    assert narrower("bfloat16", "float64") and narrower("float32", "float64")
    assert not narrower("float32", "float32") and not narrower(None, "float64") and not narrower("float64", "float32")
