"""keras-hub's Llama on JAX (PyPI keras-hub 0.32.0, Keras 3, jax 0.10; code nobody here wrote) on SmolLM2's
weights, loaded by keras-hub's own transformers converter, run layer by layer by examples/keras_hub_trace.py and
checked as a trace file.

keras-hub's converter drops the config's `rms_norm_eps`: its norms use 1e-6 where SmolLM2 says 1e-5. parity names
it, with the epsilon and where it sits (it was once named 4.3e-6 outside the root, unconfirmed). With the
epsilon set from the config the port is correct and passes, its q/k/v read in keras-hub's [T, H, hd]. Handed over
as a function of token ids around keras-hub's own `call_with_cache`, its logits pass and parity decodes through
keras-hub's own KV cache; as loaded, it fails at the logits."""

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


FUNCTIONS = """import sys

sys.path.insert(0, {examples!r})
import keras_hub_trace


def as_loaded(path):
    return keras_hub_trace.decoder(path, rms_norm_eps_from_config=False)
"""


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    from conftest import ROOT

    os.environ.setdefault("KERAS_BACKEND", "jax")     # before keras is first imported: its default is TensorFlow
    need("jax")
    need("keras_hub")
    path = tmp_path_factory.mktemp("keras_hub_functions") / "keras_functions.py"
    path.write_text(FUNCTIONS.format(examples=str(ROOT / "examples")))
    return path


def test_keras_hub_handed_over_as_a_function_decodes_through_its_own_cache(smollm2_model_dir, functions):
    """keras-hub's LlamaCausalLM.call_with_cache, in a function of token ids (was: refused, "returned function,
    not a torch.nn.Module"): its logits pass, and parity decodes through keras-hub's own KV cache."""
    from conftest import ROOT

    result, report = check_function(smollm2_model_dir, f"{ROOT / 'examples' / 'keras_hub_trace.py'}:decoder")
    assert result.returncode == 0, result.stdout[-2000:]
    assert [c["name"] for c in report["checkpoints"]] == ["logits"] and report["calibrated"]
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["generation"]["first_divergence"] is None
    assert "function of token ids" in {i["check"]: i["reason"] for i in report["not_checked"]}["layers"]


def test_keras_hub_as_loaded_fails_at_its_logits_as_a_function(smollm2_model_dir, functions):
    result, report = check_function(smollm2_model_dir, f"{functions}:as_loaded", "--decode-steps", "0")
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "logits"


def check_function(model, spec, *args):
    result = parity("check", model, spec, "--tokens", SMOLLM2_TOKENS, "--json", "-", *args)
    assert result.stdout.startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    return result, json.loads(result.stdout)
