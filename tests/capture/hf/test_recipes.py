"""What rebuilds the reference's attention probabilities (capture/hf/recipes.py): any block of rows, rebuilt, is
those rows of the probabilities the capture records, in every family (sliding windows, softcaps, sinks)."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models

TOKENS = list(range(3, 40))


@pytest.mark.parametrize("family", tiny_models.ALL_FAMILIES)
def test_rebuilt_rows_are_the_rows_the_capture_records(family, tmp_path):
    from parity.capture.hf.model import load_model
    from parity.capture.hf.recipes import ProbabilityRecipes

    model = load_model(tiny_models.save(family, tmp_path / family), dtype="float64")
    recorded = model.capture(TOKENS)
    recipes = ProbabilityRecipes(tmp_path / "recipes")
    kept = model.capture(TOKENS, recipes=recipes)
    probabilities = [name for name in recorded.names if name.endswith(".attn_probs")]
    assert probabilities and recipes.names == set(probabilities)
    assert not any(name.endswith(".attn_probs") for name in kept.names)     # kept in no trace
    for name in probabilities:
        assert recipes.shape(name) == recorded.shape_of(name)
        for start, stop in ((0, len(TOKENS)), (0, 1), (5, 17), (len(TOKENS) - 3, len(TOKENS))):
            np.testing.assert_allclose(recipes.rows(name, start, stop), recorded[name][:, start:stop],
                                       rtol=1e-12, atol=1e-15, err_msg=f"{name} rows {start}:{stop}")
    for name in kept.names:   # the rest of the trace is the trace
        np.testing.assert_array_equal(kept[name], recorded[name], err_msg=name)


def test_layers_that_share_a_mask_store_it_once(tmp_path):
    from parity.capture.hf.model import load_model
    from parity.capture.hf.recipes import ProbabilityRecipes

    model = load_model(tiny_models.save("llama", tmp_path / "llama"), dtype="float64")
    recipes = ProbabilityRecipes(tmp_path / "recipes")
    model.capture(TOKENS, recipes=recipes)
    assert len(recipes.names) > 1
    assert len(list((tmp_path / "recipes").glob("mask*"))) == 1
