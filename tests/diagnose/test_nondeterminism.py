"""Two runs of a candidate on the same tokens, parting at a checkpoint (diagnose/nondeterminism.py)."""

from detector_cases import CONFIG, rng
from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose
from parity.diagnose.nondeterminism import where_runs_part, with_runs_compared

R = rng(3)
T, WIDTH = 6, 32


def run(values: dict):
    return make_trace(values, {"dtype": "float32"})


def traces():
    """The reference, and a candidate whose attention output is off (as dropout leaves it) and what follows."""
    reference = {"embed": R.standard_normal((T, WIDTH)), "layers.0.v": R.standard_normal((T, 16)),
                 "layers.0.attn_ctx": R.standard_normal((T, WIDTH)), "layers.0.out": R.standard_normal((T, WIDTH))}
    candidate = {**reference, "layers.0.attn_ctx": reference["layers.0.attn_ctx"] + 0.3 * R.standard_normal((T, WIDTH)),
                 "layers.0.out": reference["layers.0.out"] + 0.3 * R.standard_normal((T, WIDTH))}
    reference_trace = make_trace(reference, {"dtype": "float32", "config": CONFIG})
    comparison = diagnose(compare(reference_trace, run(candidate)), reference_trace, run(candidate))
    return comparison, candidate


def test_runs_parting_are_named_at_the_first_checkpoint_they_differ():
    comparison, first = traces()
    second = {**first, "layers.0.attn_ctx": first["layers.0.attn_ctx"] + 0.3 * R.standard_normal((T, WIDTH)),
              "layers.0.out": first["layers.0.out"] + 0.3 * R.standard_normal((T, WIDTH))}
    found = where_runs_part(comparison, run(first), run(second))
    assert found is not None and (found.cause, found.checkpoint) == ("nondeterministic", "layers.0.attn_ctx")
    named = with_runs_compared(comparison, run(first), run(second))
    assert [d.cause for d in named.diagnoses] == ["nondeterministic"]   # no_known_cause dropped


def test_identical_runs_name_nothing_and_leave_the_comparison():
    comparison, first = traces()
    assert where_runs_part(comparison, run(first), run(dict(first))) is None
    assert with_runs_compared(comparison, run(first), run(dict(first))) is comparison


def test_runs_differing_by_rounding_alone_agree():
    comparison, first = traces()
    second = {name: value * (1 + 1e-9) for name, value in first.items()}   # a kernel's run-to-run rounding
    assert where_runs_part(comparison, run(first), run(second)) is None


def test_runs_parting_by_far_less_than_the_error_are_not_its_cause():
    comparison, first = traces()
    second = {**first, "layers.0.attn_ctx": first["layers.0.attn_ctx"] + 1e-3 * R.standard_normal((T, WIDTH))}
    assert where_runs_part(comparison, run(first), run(second)) is None
