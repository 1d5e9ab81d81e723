"""mlx-lm's Llama (Apple's MLX, its CPU build; PyPI mlx-lm 0.32.2, code nobody here wrote) on SmolLM2's weights,
run module by module by examples/mlx_lm_trace.py and checked as a trace file.

Loaded from a model directory transformers 5 wrote, mlx-lm keeps RoPE's base at its default (10000): it reads
`rope_theta` at the config's top level, where transformers 5 no longer writes it (`rope_parameters`). parity
names that. With the base where mlx-lm looks, the port is correct and passes in float32 and bfloat16."""

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
