"""`parity bench` end to end on a tiny model: both sides measured in their own processes, JSON, errors."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from conftest import ROOT  # noqa: E402

from parity.core.results import BenchReport  # noqa: E402


def parity(*args):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_port_against_transformers_gives_throughputs_and_memory(tmp_path):
    model = tiny_models.save("llama", tmp_path / "model")
    out = tmp_path / "bench.json"
    result = parity("bench", model, f"{ROOT / 'examples' / 'llama_port.py'}:build", "--prompt-tokens", "16",
                    "--decode-tokens", "4", "--repeats", "2", "--warmup", "1", "--threads", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    for side in ("reference", "candidate"):
        assert len(data[side]["prefill_s"]) == 2 and len(data[side]["decode_s"]) == 2
        assert data[side]["prefill_tokens_per_s"] > 0 and data[side]["decode_tokens_per_s"] > 0
        assert data[side]["peak_rss_mib"] >= data[side]["rss_after_load_mib"] > 0
    assert data["speedup"]["decode"] == pytest.approx(
        data["candidate"]["decode_tokens_per_s"] / data["reference"]["decode_tokens_per_s"])
    assert "cand/ref" in result.stdout


EXPORTED = """import torch
import transformers
from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM


def build(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.cache_implementation = "static"
    length = torch.export.Dim("T", min=1, max=32)
    return TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=32).export(
        input_ids=torch.tensor([[1, 2, 3]]), dynamic_shapes={"input_ids": {1: length}, "cache_position": {0: length}})
"""


@pytest.mark.slow
def test_a_torch_export_program_is_timed_decoding_through_its_static_cache(tmp_path):
    """A program has no config: token ids are drawn from its embedding's rows (was: "the model has no
    config.vocab_size"); transformers' ExecuTorch recipe decodes through the cache its buffers hold."""
    model = tiny_models.save("llama", tmp_path / "model")
    (tmp_path / "exported_bench.py").write_text(EXPORTED)
    out = tmp_path / "bench.json"
    result = parity("bench", model, f"{tmp_path / 'exported_bench.py'}:build", "--prompt-tokens", "8",
                    "--decode-tokens", "4", "--repeats", "2", "--warmup", "1", "--threads", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["candidate"]["prefill_tokens_per_s"] > 0 and data["candidate"]["decode_tokens_per_s"] > 0


def test_speedup_is_candidate_over_reference():
    report = BenchReport({"prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0},
                         {"prefill_tokens_per_s": 250.0, "decode_tokens_per_s": None}, {})
    assert report.ratio("prefill_tokens_per_s") == pytest.approx(2.5)
    assert report.ratio("decode_tokens_per_s") is None


def test_a_missing_gguf_exits_2_in_one_line(tmp_path):
    result = parity("bench", tmp_path, f"llamacpp:{tmp_path / 'none.gguf'}", "--repeats", "1", "--prompt-tokens", "4",
                    "--decode-tokens", "1", "--threads", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "none.gguf: no such .gguf file" in result.stderr.strip().splitlines()[-1]
