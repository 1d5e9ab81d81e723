import numpy as np

from detector_cases import rng
from family_cases import found

LOOKUP = rng(3).standard_normal((6, 16)) * 0.02
GEMMA = {"embed_scale": 4.0, "layers": []}


def test_an_unscaled_embedding_is_named():
    reference = {"embed_tokens": LOOKUP, "embed": LOOKUP * 4.0}
    assert ("embedding_scale", "embed") in found(reference, {"embed_tokens": LOOKUP, "embed": LOOKUP}, GEMMA)


def test_a_scale_applied_twice_is_named():
    reference = {"embed_tokens": LOOKUP, "embed": LOOKUP * 4.0}
    assert ("embedding_scale", "embed") in found(reference, {"embed_tokens": LOOKUP, "embed": LOOKUP * 16.0}, GEMMA)


def test_no_scale_in_the_model_or_another_table_is_not_the_scale():
    reference = {"embed_tokens": LOOKUP, "embed": LOOKUP * 4.0}
    assert not any(c == "embedding_scale" for c, _ in found(reference, {"embed": LOOKUP}, {"embed_scale": None}))
    other = rng(4).standard_normal(LOOKUP.shape) * 0.02
    assert not any(c == "embedding_scale" for c, _ in found(reference, {"embed_tokens": other, "embed": other}, GEMMA))
    assert not any(c == "embedding_scale" for c, _ in found(reference, {"embed_tokens": LOOKUP, "embed": LOOKUP * 3.0}, GEMMA))
