import numpy as np

from detector_cases import rng
from family_cases import found

R = rng(7)
T, D = 5, 16


def rms_norm(x):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * 1.3


def block():
    embed, attn_out = R.standard_normal((T, D)), R.standard_normal((T, D)) * 3.0
    post = rms_norm(attn_out)
    return {"embed": embed, "layers.0.attn_out": attn_out, "layers.0.attn_post_norm": post,
            "layers.0.resid_mid": embed + post}


def test_an_attention_output_added_without_its_post_norm_is_named():
    reference = block()
    candidate = {k: v for k, v in reference.items() if k != "layers.0.attn_post_norm"}
    candidate["layers.0.resid_mid"] = reference["embed"] + reference["layers.0.attn_out"]
    assert ("post_norm_skipped", "layers.0.resid_mid") in found(reference, candidate, {"layers": [{}]})


def test_a_family_without_post_norms_is_not_diagnosed():
    reference = block()
    del reference["layers.0.attn_post_norm"]
    candidate = dict(reference, **{"layers.0.resid_mid": reference["embed"] + 2 * reference["layers.0.attn_out"]})
    assert not any(c == "post_norm_skipped" for c, _ in found(reference, candidate, {"layers": [{}]}))
