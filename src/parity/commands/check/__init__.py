"""parity check: the reference and a candidate, captured, calibrated, compared and diagnosed in one go.

    command.py          the command line: options, and the run
    pipeline.py         the check: CheckOptions, run_check
    calibration.py      the reference at the candidate's precision, and its noise floors
    beyond_forward.py   greedy decoding, token-by-token decoding, the cache, chunked prefill, padded batches
    on_device.py        --on-device: measured where both models run
    server.py           a candidate that gives text and log-probabilities, compared token by token
"""

from parity.commands.check.command import add_arguments, run  # noqa: F401  (the command)
