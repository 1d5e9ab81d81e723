"""keras-hub's Llama on JAX (PyPI keras-hub 0.32.0, Keras 3, jax 0.10; code nobody here wrote) on SmolLM2's
weights, loaded by keras-hub's own transformers converter, run layer by layer by examples/keras_hub_trace.py and
checked as a trace file.

keras-hub's converter drops the config's `rms_norm_eps`: its norms use 1e-6 where SmolLM2 says 1e-5. parity names
it, with the epsilon and where it sits (it was once named 4.3e-6 outside the root, unconfirmed). With the
epsilon set from the config the port is correct and passes, its q/k/v read in keras-hub's [T, H, hd]."""

import json
import os

import pytest

from conftest import need
from test_cli import parity

pytest.importorskip("transformers")

SMOLLM2_TOKENS = "1,504,3458,282,2784,28,253,1184,314,1953,30,2115,260,253,2151,30"


@pytest.fixture(scope="module")
def traces(smollm2_model_dir, tmp_path_factory):
    os.environ.setdefault("KERAS_BACKEND", "jax")     # before keras is first imported: its default is TensorFlow
    need("jax")
    need("keras_hub")
    import keras_hub_trace

    directory = tmp_path_factory.mktemp("keras_hub")
    written = {}
    for name, options in (("as_loaded", []), ("float32", ["--rms-norm-eps-from-config"])):
        written[name] = directory / f"{name}.safetensors"
        keras_hub_trace.main([str(smollm2_model_dir), str(written[name]), "--tokens", SMOLLM2_TOKENS, *options])
    return written


def check(model, trace):
    result = parity("check", model, trace, "--json", "-")
    assert result.stdout.startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    return result, json.loads(result.stdout)


def test_keras_hub_dropping_the_configs_norm_epsilon_is_named(smollm2_model_dir, traces):
    result, report = check(smollm2_model_dir, traces["as_loaded"])
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_norm"
    [diagnosis] = [d for d in report["diagnoses"] if d["checkpoint"] == "layers.0.attn_norm"]
    assert diagnosis["cause"] == "norm_epsilon", diagnosis
    assert "epsilon 1e-06 where the reference uses 1e-05" in diagnosis["message"], diagnosis["message"]
    assert "outside the square root" not in diagnosis["message"] and "confirmed" in diagnosis["message"]


def test_keras_hub_with_the_configs_epsilon_passes(smollm2_model_dir, traces):
    result, report = check(smollm2_model_dir, traces["float32"])
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:3000]
    assert report["summary"]["passed"] == 483 and report["summary"]["failed"] == 0
    assert any("adapted (layout)" in note for note in report["notes"])
