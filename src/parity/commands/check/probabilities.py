"""parity check at long context: the attention probabilities measured as they are made, never stored.

Each layer's probabilities are H x T x T: 2.2 GB over SmolLM2's 30 layers in float64 at
T=1,024, 144 GB at its full 8,192, on each side. Past STORED_PROBABILITIES_BYTES over
the three traces (or with --stream-probabilities), the check keeps them in no trace:

  1. the reference keeps, per layer, what rebuilds its probabilities a block of query
     rows at a time (capture/hf/recipes.py), not the probabilities;
  2. the calibration run, at the candidate's precision, puts each block of its rows
     into a StreamedCheckpoints (core/streamed.py) that measures it against the
     reference's same rows, rebuilt, and lets it go: the noise floors;
  3. the candidate does the same, held to the tolerance those floors give (which is
     why the calibration runs first); a candidate that cannot put rows (a trace file)
     has the rows of its stored probabilities put for it;
  4. compare() takes the summaries in place of the tensors.

The verdict is the one the stored tensors would give: the same sums in the same chunks
(tests/commands/check/test_probabilities.py holds a streamed check to a stored one). The
diagnosis reads tensors, so the detectors that read the probabilities do not run on
streamed ones; a note says so when one of them fails.

Memory: a block of rows (ROW_BLOCK_BYTES) of each side at a time, and one layer's keys and
values; time: the reference's attention once more per side that streams.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from parity.core.errors import OptionError
from parity.core.names import select
from parity.core.results import Comparison, Tolerance
from parity.core.streamed import StreamedCheckpoints
from parity.core.trace import Trace, with_arrays

# Attention probabilities over the three traces (reference, calibration, candidate) past which they are streamed.
STORED_PROBABILITIES_BYTES = 8 << 30
# The first failing streamed checkpoint is captured again whole, for the diagnosis, when its pair is within this.
DIAGNOSED_PAIR_BYTES = 1 << 30

STREAMED_NOTE = ("the attention probabilities were measured as they were made, against the reference's rebuilt "
                 "from its queries and keys, and kept in no trace (--stream-probabilities, or more than "
                 f"{STORED_PROBABILITIES_BYTES >> 30} GiB of them)")
DIAGNOSIS_NOTE = ("; the detectors that read them did not run (one layer's pair is more than "
                  f"{DIAGNOSED_PAIR_BYTES >> 20} MiB): rerun with fewer tokens to have the first failing one diagnosed")


def streams_probabilities(options, reference_model, tokens: int, reference_dtype: str, tolerance_known: bool) -> bool:
    """Whether this check streams the attention probabilities: --stream-probabilities, or more of them than
    STORED_PROBABILITIES_BYTES; only where each block's tolerance is known before it goes (calibrated or given)."""
    if options.stream_probabilities is False or options.on_device:
        return False
    if not select(["layers.0.attn_probs"], options.checkpoints):
        return False
    if not tolerance_known:
        if options.stream_probabilities:
            raise OptionError("--stream-probabilities measures each block against a tolerance known before it goes: "
                              "a calibrated check (the default with a candidate of known precision) or --rtol/--atol; "
                              "give one, or drop --stream-probabilities")
        return False
    if options.stream_probabilities:
        return True
    return probabilities_bytes(reference_model, tokens, reference_dtype, options.checkpoints) > \
        STORED_PROBABILITIES_BYTES


def probabilities_bytes(reference_model, tokens: int, reference_dtype: str, checkpoints: str | None) -> int:
    """The attention probabilities of the three traces: H x T x T per layer `checkpoints` selects, the
    reference's in its precision, the other two in float32."""
    config = reference_model.model.config
    config = getattr(config, "get_text_config", lambda: config)()
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    layers = len(select([f"layers.{i}.attn_probs" for i in range(getattr(config, "num_hidden_layers", 0) or 0)],
                        checkpoints))
    return heads * tokens * tokens * layers * ({"float64": 8, "float32": 4}.get(reference_dtype, 2) + 2 * 4)


def recipes_in(spill: str, name: str = "recipes"):
    from parity.capture.hf.recipes import ProbabilityRecipes

    return ProbabilityRecipes(Path(spill) / name)


def streamed(recipes, tolerance_of) -> StreamedCheckpoints | None:
    """A StreamedCheckpoints against the reference's kept recipes; None where none was kept (no eager attention:
    no probabilities to stream)."""
    return StreamedCheckpoints(recipes, tolerance_of) if recipes is not None and recipes.names else None


def tolerance_of(config):
    """The tolerance a streamed checkpoint is held to, as compare_checkpoint chooses it: the user's, or the
    calibrated one; None (not comparable) where the calibration gave no floor."""
    from parity.core.calibrate import calibrated_tolerance

    def tolerance(name: str) -> Tolerance | None:
        if config.tolerance is not None:
            return config.tolerance
        if config.noise and name in config.noise:
            return calibrated_tolerance(config.noise[name], config.noise_dtype, config.noise_label)
        return None

    return tolerance


def fed_from_trace(stream: StreamedCheckpoints, trace: Trace) -> None:
    """Put into `stream` the rows of what it wants that `trace` holds and the candidate did not put as it made
    them (a candidate that only writes traces), a block at a time (compare() then takes the stream's results)."""
    for name in trace.names:
        if not stream.wants(name) or name in stream.received:
            continue
        tensor, shape = trace[name], stream.reference.shape(name)
        axis = len(shape) - 2                                 # (H, T, S): the query rows
        if tensor.ndim != len(shape) or tensor.shape[axis] != shape[axis]:
            stream.put(name, np.asarray(tensor), 0)           # refused, with both shapes
            continue
        step = max(1, stream.reference.rows_per_block(name))
        index = [slice(None)] * tensor.ndim
        for start in range(0, tensor.shape[axis], step):
            index[axis] = slice(start, start + step)
            stream.put(name, np.asarray(tensor[tuple(index)]), start)


def with_streamed_note(comparison: Comparison, stream: StreamedCheckpoints | None, held: str | None) -> Comparison:
    """The comparison with a note that the probabilities were streamed, and what that left out of the diagnosis."""
    if stream is None or not (stream.received or held):
        return comparison
    note = STREAMED_NOTE
    if held:
        note += f"; {held}, the first of them to fail, was captured again whole on both sides for the diagnosis"
    elif any(result.failed for result in comparison.checkpoints if result.name in stream.received):
        note += DIAGNOSIS_NOTE
    return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (note,))


def with_first_failure_held(stream: StreamedCheckpoints, reference: Trace, trace: Trace, candidate, options,
                            reference_model, progress) -> tuple[Trace, Trace, str | None]:
    """(reference, candidate, name): both traces with the first failing streamed checkpoint held whole, its
    reference rebuilt and the candidate's captured again alone, so that the detectors read it as they read a
    stored one; `name` is None (the traces unchanged) when none failed or its pair is over
    DIAGNOSED_PAIR_BYTES (the report then says so)."""
    import math

    from parity.core.names import in_flow_order

    results = stream.results()
    failed = [name for name in in_flow_order(results) if results[name][0].failed]
    if not failed:
        return reference, trace, None
    name = failed[0]
    shape = stream.reference.shape(name)
    if math.prod(shape) * (8 + 4) > DIAGNOSED_PAIR_BYTES:
        return reference, trace, None
    progress.step(f"{name} failed: capturing it again whole on both sides, for the diagnosis")
    if name not in trace:
        request = dataclasses.replace(options.request(reference_model), checkpoints=name, raw=False)
        again = candidate.trace(reference.tokens, request, None)
        if name not in again:
            return reference, trace, None
        trace = with_arrays(trace, {name: np.asarray(again[name])})
    reference = with_arrays(reference, {name: stream.reference.rows(name, 0, shape[-2])})
    stream.forget(name)
    return reference, trace, name


class Streamed:
    """One check's streamed probabilities: the StreamedCheckpoints the candidate puts them into (None when they
    are stored), and which failing one was captured again whole for the diagnosis."""

    def __init__(self, stream: StreamedCheckpoints | None) -> None:
        self.stream = stream
        self.held: str | None = None

    def __repr__(self) -> str:
        return f"<Streamed {self.stream!r}{' held ' + self.held if self.held else ''}>"

    @classmethod
    def of(cls, recipes, config) -> "Streamed":
        return cls(streamed(recipes, tolerance_of(config)))

    def finish(self, reference: Trace, trace: Trace, candidate, options, reference_model,
               progress) -> tuple[Trace, Trace]:
        """(reference, candidate) after the candidate's pass: what it stored measured too, and the first failure
        held whole on both sides."""
        fed_from_trace(self.stream, trace)
        reference, trace, self.held = with_first_failure_held(self.stream, reference, trace, candidate, options,
                                                              reference_model, progress)
        return reference, trace

    def noted(self, comparison: Comparison) -> Comparison:
        return with_streamed_note(comparison, self.stream, self.held)
