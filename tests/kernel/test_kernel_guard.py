"""Whatever a kernel does in parity's own process (returns junk, raises, calls sys.exit or os._exit,
prints) is that case's finding in one line, never a traceback or parity's exit; sizes that cannot fit
are refused before anything is made."""

import contextlib
import io

import pytest

import user_code
from parity.core.errors import OptionError
from parity.kernel import KernelOptions, run_kernel

OPTIONS = KernelOptions(lengths=(1, 13), dtypes=("float32",))
IN_PROCESS = sorted(name for name, (body, outcome) in user_code.KERNEL_BEHAVIOURS.items()
                    if outcome != "refuse" and name not in ("closes_stdout", "keyboard_interrupt"))


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    from parity.capture.torch.factory import import_module

    return import_module(str(user_code.write_module(tmp_path_factory.mktemp("kernels"))))


@pytest.mark.parametrize("name", IN_PROCESS)
def test_each_behaviour_is_a_finding_in_one_line(kernels, name):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = run_kernel("softmax", getattr(kernels, name), OPTIONS)
    assert bool(report) == (user_code.KERNEL_BEHAVIOURS[name][1] == "pass"), report.cases[0]
    assert printed.getvalue() == ""   # what the kernel prints goes to standard error
    for case in report.cases:
        reason = str(case.forward.get("reason", "")) + str(case.backward.get("reason", ""))
        assert "\n" not in reason


@pytest.mark.parametrize("name, says", [
    ("returns_none", "returned NoneType, not a torch.Tensor"),
    ("returns_numpy", "returned ndarray, not a torch.Tensor"),
    ("returns_int", "returned int, not a torch.Tensor"),
    ("wrong_shape", "returned shape (2, 4, 13, 1), the reference's is (2, 4, 13, 13)"),
    ("int_tensor", "returned a int32 tensor, not a real floating one"),
    ("sys_exit_0", "raised SystemExit: 0 (at "),
    ("os_exit_0", "called os._exit(0) (at "),
    ("base_exception", "raised Odd: odd (at "),
    ("raises_unprintable", "raised Unprintable: (its message cannot be printed)"),
])
def test_the_reason_says_what_the_kernel_did(kernels, name, says):
    report = run_kernel("softmax", getattr(kernels, name), KernelOptions(lengths=(13,), dtypes=("float32",)))
    reasons = [case.forward.get("reason", "") for case in report.cases]
    assert any(says in reason for reason in reasons), reasons


@pytest.mark.parametrize("length", [10**8, 10**9, 2**70])
def test_a_length_that_cannot_fit_is_refused_before_anything_is_made(length):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OptionError, match=r"--lengths .*needs about .*free on cpu; give shorter lengths"):
        run_kernel("softmax", lambda x, dim: x, KernelOptions(lengths=(13, length)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024   # KiB: nothing was made


@pytest.mark.parametrize("seed", [-1, 2**70])
def test_a_seed_out_of_range_is_refused(seed):
    with pytest.raises(OptionError, match="seed must be an integer from 0 to 2\\^32 - 1"):
        KernelOptions(seed=seed)
