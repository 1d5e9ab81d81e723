"""A failing PyTorch candidate run once more on the same tokens, to tell randomness at inference from a mistake.

Its forward is the user's code, and a port that leaves dropout on (or reads memory it never wrote) fails
every check in a way no detector of arithmetic explains. A second run finds it: where the two runs part
(diagnose/nondeterminism.py), the comparison names `nondeterministic`. Only a failing check pays for the
second pass, and only where the candidate's trace is held in memory (at most 1 GiB in float32,
commands/check/spill.py): a longer input's trace is spilled to disk and streamed, and a second one would
double that.
"""

from __future__ import annotations

import dataclasses

from parity.core.results import Comparison
from parity.core.trace import Trace


def with_second_run(comparison: Comparison, trace: Trace, candidate, request, tokens: list[int], progress, *,
                    held: bool) -> Comparison:
    """`comparison` with the candidate's two runs over `tokens` compared, where it failed, the candidate is a
    module run here, and its trace was `held` in memory."""
    from parity.diagnose.nondeterminism import with_runs_compared

    if comparison.passed or candidate.supports("module") is not None or not tokens or not held:
        return comparison
    progress.step("running the candidate once more on the same tokens, to see whether its two runs agree")
    try:
        again = candidate.trace(tokens, request, progress)
    except Exception as error:   # noqa: BLE001 - the user's forward, called a second time
        from parity.capture.torch.factory import describe_error

        return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (
            f"a second run of the candidate on the same tokens failed where the first ran ({describe_error(error)}): "
            "its forward keeps state from one call to the next",))
    return with_runs_compared(comparison, trace, again)
