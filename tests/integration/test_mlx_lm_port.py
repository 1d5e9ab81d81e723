"""mlx-lm's Llama (Apple's MLX, its CPU build; PyPI mlx-lm 0.32.2, code nobody here wrote) on SmolLM2's weights,
run module by module by examples/mlx_lm_trace.py and checked as a trace file.

Loaded from a model directory transformers 5 wrote, mlx-lm keeps RoPE's base at its default (10000): it reads
`rope_theta` at the config's top level, where transformers 5 no longer writes it (`rope_parameters`). parity
names that. With the base where mlx-lm looks, the port is correct and passes in float32 and bfloat16. Handed over
whole, as a function of token ids (its model called on them), it is seen at its logits alone, and the base it
keeps is named there too: the reference run again with RoPE's base at 10000 agrees with it."""

import json

import pytest

from conftest import need
from test_cli import parity

pytest.importorskip("transformers")

SMOLLM2_TOKENS = "1,504,3458,282,2784,28,253,1184,314,1953,30,2115,260,253,2151,30"


@pytest.fixture(scope="module")
def traces(smollm2_model_dir, tmp_path_factory):
    need("mlx_lm")
    import mlx_lm_trace

    directory = tmp_path_factory.mktemp("mlx_lm")
    written = {}
    for name, options in (("as_loaded", []), ("float32", ["--rope-theta-from-parameters"]),
                          ("bfloat16", ["--rope-theta-from-parameters", "--dtype", "bfloat16"])):
        written[name] = directory / f"{name}.safetensors"
        mlx_lm_trace.main([str(smollm2_model_dir), str(written[name]), "--tokens", SMOLLM2_TOKENS, *options])
    return written


def check(model, trace):
    result = parity("check", model, trace, "--json", "-")
    assert result.stdout.startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    return result, json.loads(result.stdout)


def test_mlx_lm_reading_a_transformers_5_config_is_named_rope_theta(smollm2_model_dir, traces):
    config = json.loads((smollm2_model_dir / "config.json").read_text())
    assert "rope_theta" not in config and config["rope_parameters"]["rope_theta"] == 100000.0
    result, report = check(smollm2_model_dir, traces["as_loaded"])
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    [diagnosis] = [d for d in report["diagnoses"] if d["checkpoint"] == "layers.0.q_rope"]
    assert diagnosis["cause"] == "rope_theta" and "1e+04" in diagnosis["message"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mlx_lm_with_its_rope_base_passes(smollm2_model_dir, traces, precision):
    result, report = check(smollm2_model_dir, traces[precision])
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:3000]
    assert report["summary"]["passed"] == 483 and report["summary"]["failed"] == 0
    assert precision in report["checkpoints"][0]["tolerance"]["basis"]


FUNCTION = """import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, {examples!r})
import mlx_lm_trace


def as_loaded(path):
    import mlx.core as mx

    model = mlx_lm_trace.load(Path(path), "float32", False)

    def forward(input_ids):
        return np.array(model(mx.array(np.asarray(input_ids))).astype(mx.float32))
    forward.parity_dtype = "float32"
    return forward
"""


def test_mlx_lm_handed_over_as_a_function_is_named_at_its_logits(tmp_path, capsys):
    """A tiny Llama with SmolLM2's base (100000), transformers 5's config: mlx-lm's own model, called on the ids,
    keeps 10000; no layer can be seen, and the setting is named and confirmed at the logits (was no_known_cause)."""
    need("mlx_lm")
    import tiny_models
    from conftest import ROOT, TOKENS
    from parity.cli import main

    model_dir = tiny_models.save("llama", tmp_path / "model", rope_parameters={"rope_type": "default",
                                                                               "rope_theta": 100000.0})
    factory = tmp_path / "mlx_function.py"
    factory.write_text(FUNCTION.format(examples=str(ROOT / "examples")))
    capsys.readouterr()
    code = main(["check", str(model_dir), f"{factory}:as_loaded", "--tokens", ",".join(map(str, TOKENS)),
                 "--json", "-"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["first_divergence"]["checkpoint"] == "logits"
    [diagnosis] = [d for d in report["diagnoses"] if d["checkpoint"] == "logits"]
    assert diagnosis["cause"] == "rope_theta" and diagnosis["confidence"] == "confirmed", diagnosis
