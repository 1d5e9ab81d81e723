"""The candidate's own failure past its forward pass, as one line.

The forward pass over the prompt ran, and the greedy run (or `parity generate`) feeds the candidate inputs
it has not seen: longer ones, one token at a time. An engine that breaks there (CTranslate2 4.8's Gemma 3
on inputs longer than its sliding window) raises its own exception; it is said in one line with where in
the user's code it was raised, and the command ends with exit code 2.
"""

from __future__ import annotations

import contextlib

from parity.core.errors import CaptureError, ParityError


@contextlib.contextmanager
def candidate_running(what: str, *, hint: str = ""):
    """The candidate's exceptions while it runs `what` as a CaptureError ("... failed on `what`: ..."), with
    `hint` after it; parity's own errors pass as they are."""
    from parity.capture.torch.factory import describe_error

    try:
        yield
    except ParityError:
        raise
    except Exception as error:   # noqa: BLE001 - the candidate's code, on inputs its forward pass did not see
        raise CaptureError(f"the candidate failed on {what}: {describe_error(error)}{hint}") from error
