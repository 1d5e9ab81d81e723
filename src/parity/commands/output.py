"""How a command ends: the result on the console, in the files asked for, and the exit code.

    return finish(result, args)     # console (unless --json -), --json, --html/--junit/--markdown; 0 or 1

Exit codes: 0 parity holds, 1 a divergence was found, 2 unusable input (raised as a
ParityError and printed by cli.main).
"""

from __future__ import annotations

EXIT_PASS, EXIT_DIVERGED, EXIT_UNUSABLE = 0, 1, 2


def progress():
    """Steps of long work: a spinner on a terminal, one line per step otherwise."""
    from parity.report.progress import Progress

    return Progress()


def finish(result, args) -> int:
    """Show `result` and write the report files `args` asks for; the exit code its verdict gives."""
    from parity.report import files, registry

    json_path = getattr(args, "json", None)
    if json_path != "-":
        registry.show(result)
    if json_path is not None:   # after the console report, which a failed write then does not lose
        registry.write(result, "json", json_path, overwrite=args.force)

    files.write(result, {option: getattr(args, option, None) for option in files.FORMATS}, overwrite=args.force)
    return EXIT_PASS if result else EXIT_DIVERGED


def numeric_warnings_off():
    """numpy's overflow and invalid-value RuntimeWarnings silenced: parity counts non-finite values itself."""
    import contextlib
    import warnings

    import numpy as np

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", RuntimeWarning)
    stack.enter_context(np.errstate(all="ignore"))
    return stack
