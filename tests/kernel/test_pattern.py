"""The pattern line, from constructed case results."""

from parity.kernel.pattern import describe
from parity.core.results import CaseResult

PASS, FAIL = {"passed": True}, {"passed": False}


def case(length, dtype="float32", condition="normal", forward=PASS, backward=PASS):
    return CaseResult({"T": length}, dtype, condition, forward, {**backward, "checked": True})


def test_nothing_to_say_when_every_case_passes():
    assert describe((case(1), case(64))) is None


def test_lengths_off_a_tile():
    cases = tuple(case(T, forward=PASS if T % 32 == 0 else FAIL) for T in (13, 32, 64, 127, 257))
    assert describe(cases) == "fails at T = 13, 127, 257: lengths that are not a multiple of 32"


def test_long_lengths():
    cases = tuple(case(T, forward=PASS if T < 127 else FAIL) for T in (1, 13, 64, 127, 257))
    assert describe(cases) == "fails at T = 127, 257: lengths of 127 and more"


def test_one_dtype_and_condition():
    cases = (case(13, "float32"), case(13, "float16"), case(13, "float16", "extreme", forward=FAIL),
             case(13, "float32", "extreme"))
    assert describe(cases) == "only on extreme inputs; only at float16"


def test_backward_only():
    cases = (case(13), case(13, "bfloat16", backward=FAIL))
    assert describe(cases) == "only at bfloat16; the forward pass matches, the backward does not"
