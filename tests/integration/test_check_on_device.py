"""parity check --on-device: measured where both models run, the report is the host pass's report."""

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, TOKENS

TOKEN_ARG = ",".join(map(str, TOKENS))
ON_DEVICE_NOTE = "no trace was copied to the host (--on-device)"
RERUN_NOTE = "the on-device pass found a divergence"

BF16_FACTORY = (
    "import torch, llama_port\n"
    "def correct(path):\n"
    "    return llama_port.build(path, dtype=torch.bfloat16)\n"
    "def tiled_heads(path):\n"
    "    return llama_port.build(path, llama_port.Bugs(gqa_order='tile'))\n"
)


def parity(*args):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT / "examples", timeout=600)


def both_reports(tmp_path, model, candidate, *extra):
    """The JSON reports of the host pass and of the on-device pass, and the on-device run's result."""
    reports = []
    for name, flags in (("host", ()), ("device", ("--on-device",))):
        path = tmp_path / f"{name}.json"
        result = parity("check", model, candidate, "--tokens", TOKEN_ARG, "--json", path, *extra, *flags)
        assert result.returncode in (0, 1), result.stderr
        reports.append(json.loads(path.read_text()))
    return reports[0], reports[1], result


def differences(host, device, path=""):
    """Where two reports differ, numbers to 1e-5 (the device sums in float64, the host in float32 chunks)."""
    if isinstance(host, dict) and isinstance(device, dict):
        keys = set(host) | set(device)
        return [d for key in sorted(keys) for d in (differences(host[key], device[key], f"{path}/{key}")
                                                     if key in host and key in device else [f"{path}/{key}"])]
    if isinstance(host, list) and isinstance(device, list):
        if len(host) != len(device):
            return [f"{path}: {len(host)} vs {len(device)} items"]
        return [d for i, (h, c) in enumerate(zip(host, device)) for d in differences(h, c, f"{path}[{i}]")]
    if isinstance(host, float) and isinstance(device, float):
        same = host == device or math.isclose(host, device, rel_tol=1e-5, abs_tol=1e-12)
        return [] if same else [f"{path}: {host} vs {device}"]
    return [] if host == device else [f"{path}: {host!r} vs {device!r}"]


def without_notes(report):
    return {key: value for key, value in report.items() if key != "notes"}


@pytest.mark.parametrize("family, candidate", [("qwen3", "llama_port.py:build"), ("gpt2", "gpt2_port.py:build"),
                                               ("llama", "the model directory")])
def test_a_correct_port_gets_the_host_passs_report(model_dirs, tmp_path, family, candidate):
    # a model directory as the candidate loads where the reference runs (--device-map), raw outputs included
    spec = model_dirs[family] if candidate == "the model directory" else ROOT / "examples" / candidate
    host, device, result = both_reports(tmp_path, model_dirs[family], spec, "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert host["verdict"] == device["verdict"] == "pass"
    assert differences(without_notes(host), without_notes(device)) == []
    assert any(ON_DEVICE_NOTE in note for note in device["notes"])
    assert not any(ON_DEVICE_NOTE in note for note in host["notes"])


def test_a_bfloat16_port_is_calibrated_on_the_device(model_dirs, tmp_path):
    factory = tmp_path / "ports.py"
    factory.write_text(BF16_FACTORY)
    host, device, result = both_reports(tmp_path, model_dirs["qwen3"], f"{factory}:correct")
    assert result.returncode == 0, result.stdout + result.stderr
    assert device["calibrated"] and device["reference"]["dtype"] == "float64"
    assert differences(without_notes(host), without_notes(device)) == []


def test_a_failure_is_run_again_with_full_traces_and_diagnosed(model_dirs, tmp_path):
    factory = tmp_path / "ports.py"
    factory.write_text(BF16_FACTORY)
    host, device, result = both_reports(tmp_path, model_dirs["llama"], f"{factory}:tiled_heads")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the on-device pass found a divergence: running again with full traces" in result.stderr
    assert device["first_divergence"]["checkpoint"] == host["first_divergence"]["checkpoint"] == "layers.0.attn_probs"
    assert [d["cause"] for d in device["diagnoses"]] == [d["cause"] for d in host["diagnoses"]]
    assert "gqa_head_mapping" in [d["cause"] for d in device["diagnoses"]]
    assert any(RERUN_NOTE in note for note in device["notes"])


def test_candidates_that_do_not_run_in_pytorch_and_options_that_need_traces_are_refused(model_dirs, tmp_path):
    trace = tmp_path / "trace.safetensors"
    captured = parity("capture", model_dirs["llama"], "--tokens", TOKEN_ARG, "-o", trace)
    assert captured.returncode == 0, captured.stderr
    for args, message in (
        ((trace,), "--on-device needs a candidate that runs in PyTorch"),
        (("http://127.0.0.1:9",), "is http://HOST:PORT: drop --on-device"),   # refused before any request
        ((ROOT / "examples/llama_port.py:build", "--save-traces", tmp_path / "traces"),
         "--save-traces needs the tensors on the host, which --on-device does not bring there"),
    ):
        result = parity("check", model_dirs["llama"], *args, "--tokens", TOKEN_ARG, "--on-device")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "traces").exists()


def test_models_on_two_devices_are_refused():
    import torch

    from parity.commands.check.on_device import check_devices
    from parity.core.errors import OptionError

    class Loaded:   # what parity check holds of each side: its torch module (the reference's .model, a
        def __init__(self, model):                          # candidate's .module)
            self.model = self.module = model

    reference, candidate = Loaded(torch.nn.Linear(2, 2)), Loaded(torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(OptionError, match="needs both models on one device: the reference runs on cpu"):
        check_devices(reference, candidate)
    assert check_devices(reference, Loaded(torch.nn.Linear(2, 2))) == "cpu"


CUDA_FACTORY = (
    "import llama_port\n"
    "def correct(path):\n"
    "    return llama_port.build(path).cuda()\n"
    "def tiled_heads(path):\n"
    "    return llama_port.build(path, llama_port.Bugs(gqa_order='tile')).cuda()\n"
)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_a_cuda_device_with_decoding(model_dirs, tmp_path):
    """Both models on the GPU, decoding checked too (token ids go to the model's device)."""
    factory = tmp_path / "cuda_ports.py"
    factory.write_text(CUDA_FACTORY)
    (tmp_path / "correct").mkdir()
    (tmp_path / "tiled").mkdir()
    host, device, result = both_reports(tmp_path / "correct", model_dirs["llama"], f"{factory}:correct",
                                        "--device", "cuda:0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert differences(without_notes(host), without_notes(device)) == []
    assert any("measured on cuda:0" in note for note in device["notes"])
    host, device, result = both_reports(tmp_path / "tiled", model_dirs["llama"], f"{factory}:tiled_heads",
                                        "--device", "cuda:0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert device["first_divergence"]["checkpoint"] == host["first_divergence"]["checkpoint"] == "layers.0.attn_probs"
    assert "gqa_head_mapping" in [d["cause"] for d in device["diagnoses"]]
