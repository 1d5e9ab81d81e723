"""The second real pair: Gemma 3 270M (Q4_K_M) in transformers against the same GGUF in llama.cpp."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import STRICT, need

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
LAYERS = 18


@pytest.fixture(scope="module")
def gemma3_gguf() -> Path:
    cache = Path(os.environ.get("PARITY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "parity")
    path = cache / "gemma-3-270m-q4_k_m.gguf"
    if not path.is_file():
        if STRICT:
            raise FileNotFoundError(f"{path} is missing: scripts/install.sh assembles it")
        pytest.skip("the Gemma 3 270M GGUF is not in the parity cache (scripts/install.sh assembles it)")
    return path


def test_gemma3_passes_layer_by_layer_with_every_layer_compared(gemma3_gguf, tmp_path):
    need("llama_cpp")
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "parity", "check", gemma3_gguf, f"llamacpp:{gemma3_gguf}",
                             "--prompt", "The capital of France is", "--json", report],
                            capture_output=True, text=True, timeout=1800)
    assert "Traceback" not in result.stderr, result.stderr
    data = json.loads(report.read_text())
    assert result.returncode == 0 and data["verdict"] == "pass", result.stdout[-3000:]
    assert data["calibrated"] and data["candidate"]["arch"] == "gemma3"
    compared = {c["name"] for c in data["checkpoints"] if c.get("metrics")}
    for layer in range(LAYERS):
        for kind in ("attn_norm", "q_norm", "q_rope", "attn_probs", "attn_out", "attn_post_norm", "resid_mid",
                     "mlp_act", "mlp_post_norm", "out"):
            assert f"layers.{layer}.{kind}" in compared
