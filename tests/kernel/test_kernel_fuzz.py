"""Random kernels of one to three behaviours (tests/user_code.py) in parity's own process: no exception
escapes, and each run passes exactly when every behaviour in it is right. What only a child process
survives (C exits, crashes, hangs) runs in tests/integration/test_user_code_cli.py and in
scripts/fuzz_surfaces.py (1,000 through the CLI)."""

import random

import user_code
from parity.kernel import KernelOptions, run_kernel

COUNT = 40
IN_PROCESS = {name for name, (_, outcome) in user_code.KERNEL_BEHAVIOURS.items()
              if outcome != "refuse" and name not in ("closes_stdout", "keyboard_interrupt", "correct_noisy")}
OPTIONS = KernelOptions(lengths=(1, 13), dtypes=("float32", "float16"))


def test_random_kernels_pass_exactly_when_right(tmp_path):
    from parity.capture.torch.factory import import_module

    rng = random.Random(24)
    made = []
    while len(made) < COUNT:
        name, body, expected = user_code.random_kernel(rng)
        if all(part in IN_PROCESS for part in name.split("+")):
            made.append((f"k{len(made)}", body, expected))
    module = tmp_path / "random_kernels.py"
    module.write_text(user_code.HEADER + "".join(f"\ndef {name}(x, dim):\n    {body}\n" for name, body, _ in made))
    kernels = import_module(str(module))
    for name, body, expected in made:
        report = run_kernel("softmax", getattr(kernels, name), OPTIONS)
        assert bool(report) == (expected == "pass"), (body, [case.forward.get("reason") for case in report.cases])
