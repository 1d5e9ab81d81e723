"""Confirmed repairs (repair.py): a cause's inverse applied to the candidate, held to the checkpoint's tolerance."""

import numpy as np

from detector_cases import CONFIG, rng
from parity.core.compare import compare
from parity.core.results import Diagnosis
from parity.core.trace import make_trace
from parity.diagnose.context import Context, model_config
from parity.diagnose.repair import confirm, verdict

R = rng(53)


def context(reference, candidate):
    reference_trace = make_trace({"layers.0.q": reference}, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace({"layers.0.q": candidate}, {"dtype": "float32"})
    return Context(compare(reference_trace, candidate_trace), reference_trace, candidate_trace,
                   model_config(reference_trace))


def test_a_diagnosis_has_no_confidence_unless_given_one():
    assert Diagnosis("x", "embed", "m").confidence is None


def test_a_repair_within_the_tolerance_is_confirmed_and_one_beyond_it_likely():
    x = R.standard_normal((6, 32))
    at = context(x, -x)
    assert verdict(at, "layers.0.q", x.copy())[0] == "confirmed"
    assert verdict(at, "layers.0.q", x + 1e-2)[0] == "likely"
    assert verdict(at, "layers.0.q", None) == ("likely", None)


def test_confirm_says_what_was_undone():
    x = R.standard_normal((6, 32))
    diagnosis = confirm(context(x, -x), Diagnosis("sign_flip", "layers.0.q", "negated"), x, "negating the candidate")
    assert diagnosis.confidence == "confirmed"
    assert diagnosis.message.startswith("negated; confirmed: negating the candidate restores the reference's layers.0.q")


def test_sign_and_scale_are_confirmed_end_to_end():
    from parity.diagnose import diagnose

    x = R.standard_normal((6, 32))
    for candidate, cause in ((-x, "sign_flip"), (3 * x, "scale_factor")):
        at = context(x, candidate)
        found = diagnose(at.comparison, at.reference, at.candidate).diagnoses
        assert [(d.cause, d.confidence) for d in found] == [(cause, "confirmed")]
    assert np.isfinite(x).all()
