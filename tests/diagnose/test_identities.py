"""Identities inside a trace (identities.py): checked on the candidate's own tensors against the reference's,
a scaled term of a residual sum fitted, and what a broken identity says when nothing else explains it."""

import numpy as np
import pytest

from detector_cases import rng
from parity.diagnose.context import Context, model_config
from parity.diagnose.identities import checks

R = rng(37)
T, WIDTH = 8, 32


def block(x, attn_out, mlp_out):
    mid = x + attn_out
    return {"embed": x, "layers.0.attn_out": attn_out, "layers.0.resid_mid": mid, "layers.0.mlp_out": mlp_out,
            "layers.0.out": mid + mlp_out}


def test_a_branch_halved_before_the_add_is_read_off_and_confirmed():
    from family_cases import diagnosed

    x, attn_out, mlp_out = (R.standard_normal((T, WIDTH)) for _ in range(3))
    base = block(x, attn_out, mlp_out)
    candidate = {**base, "layers.0.resid_mid": x + 0.5 * attn_out}
    (diagnosis,) = [d for d in diagnosed(base, candidate, {}).diagnoses if d.cause == "residual_scale"]
    assert "1 x embed + 0.5 x layers.0.attn_out" in diagnosis.message and "1/2" in diagnosis.message
    assert diagnosis.confidence == "confirmed"


def test_a_broken_identity_is_said_in_no_known_cause():
    from family_cases import diagnosed

    x, attn_out, mlp_out = (R.standard_normal((T, WIDTH)) for _ in range(3))
    base = block(x, attn_out, mlp_out)
    candidate = {**base, "layers.0.out": base["layers.0.out"] + np.sin(3 * base["layers.0.resid_mid"])}
    (diagnosis,) = diagnosed(base, candidate, {}).diagnoses
    assert diagnosis.cause == "no_known_cause"
    assert "the candidate's own tensors break layers.0.out = layers.0.resid_mid + 1 x layers.0.mlp_out" in diagnosis.message


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["llama3", "qwen3", "gemma3", "gpt2", "mistral"])
def test_a_correct_port_keeps_every_identity(family, dtype):
    """float32 against float64, and bfloat16: every identity of every layer holds on the port's own tensors."""
    pytest.importorskip("transformers")
    from planted_bugs import families

    reference, candidate, comparison = families().compared(family, dtype=dtype, calibrated=True)
    context = Context(comparison, reference, candidate, model_config(reference))
    checked = [check for name in reference.names for check in checks(context, name)]
    assert len(checked) >= 3 * model_config(reference).layers
    assert not [check.describe() for check in checked if check.failed]
