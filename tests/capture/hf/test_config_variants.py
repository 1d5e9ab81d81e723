"""The reference built again under a config setting: transformers takes every setting tried for every family the
capture maps, the built model computes with the reference's own parameters (no copy), and a setting changes what
it computes."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from conftest import TOKENS  # noqa: E402


@pytest.mark.parametrize("family", tiny_models.ALL_FAMILIES)
def test_every_setting_tried_builds_and_runs_on_the_reference_weights(family, tmp_path):
    from parity.capture.hf.model import load_model
    from parity.capture.hf.settings import built_with
    from parity.core.config_settings import settings_to_try

    reference = load_model(tiny_models.save(family, tmp_path), dtype="float64")
    own = {parameter.data_ptr() for parameter in reference.model.parameters()}
    logits = reference.logits(TOKENS)
    moved = []
    for setting in settings_to_try(reference.model.config.to_dict()):
        variant = built_with(reference, setting.changes)
        shared = {parameter.data_ptr() for parameter in variant.model.parameters()}
        assert shared == own, setting                                 # the very same storage (a tied head too)
        changed = variant.logits(TOKENS)
        assert np.all(np.isfinite(changed)), setting
        moved.append(np.linalg.norm(changed - logits) / np.linalg.norm(logits))
    if family != "opt":                                               # OPT's config holds no setting to try
        assert max(moved) > 1e-4, moved
    assert np.array_equal(reference.logits(TOKENS), logits)          # the reference itself is untouched


def test_a_setting_the_weights_do_not_fit_is_one_error(tmp_path):
    from parity.capture.hf.model import load_model
    from parity.capture.hf.settings import built_with
    from parity.core.errors import CaptureError

    reference = load_model(tiny_models.save("llama", tmp_path), dtype="float32")
    with pytest.raises(CaptureError, match="transformers could not build"):
        built_with(reference, (("intermediate_size", 32),))
