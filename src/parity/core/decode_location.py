"""Where a decode step parts from the full pass: the first checkpoint whose step tensor differs.

A step recorded through the candidate's cache holds, of each checkpoint, this position's
row, or (keys that transformers hands to attention) the rows of every position read from
the cache, 0..position. Each is held to the same rows of a full pass over the tokens up to
this position, and the first checkpoint in data-flow order outside the step's bound is
where decoding parts from it.

After a long prompt that full pass's trace would be T rows of every checkpoint (and
H x T x T attention probabilities per layer): more than a check holds. `PositionRows`
takes the pass's checkpoints as they are made (a stream sink, core/streamed.py's
`wants`/`put`) and keeps only the verdict of each, and the keys of the layer a diagnosis
reads (diagnose/decode_causes.py):

    rows = PositionRows(step, position, bound)
    candidate.trace(sequence[:position + 1], TraceRequest(taps=taps, raw=False, stream=rows))
    rows.first_checkpoint()          # what first_checkpoint(full_trace, step, position, bound) gives
"""

from __future__ import annotations

import math

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import BEFORE_LAYERS, KEY_KINDS, in_flow_order, parse, token_axis

# What the cache causes read of the full pass (diagnose/decode_causes.py): the keys and the values, whole.
KEPT_WHOLE = (*KEY_KINDS, "v")


def first_checkpoint(full_trace, step: dict, position: int, bound: float) -> str | None:
    """The first checkpoint (in data-flow order) where a decode step's tensors part from the full pass's
    at the same position (`step_differs`)."""
    for name in in_flow_order(step):
        if name not in full_trace or name == "logits":
            continue
        if step_differs(full_rows(name, full_trace[name], step[name], position), step[name], bound):
            return name
    return None


def full_rows(name: str, full: np.ndarray, value: np.ndarray, position: int) -> np.ndarray:
    """What of the full pass's tensor a decode step's tensor `value` is held to: this position's row, or (keys
    that transformers hands to attention) the rows of every position read from the cache, 0..position; of the
    attention probabilities (H, T, S), this query's row over its keys (the prefill's: every query's)."""
    checkpoint = parse(name)
    if checkpoint is not None and checkpoint.kind == "attn_probs":
        if value.ndim == 3 and value.shape[1] == position + 1 and position > 0:   # the prefill's every query
            return full[:, : position + 1, : position + 1]
        return full[:, position, : position + 1]
    if reads_cached_rows(value, position):
        return full[: position + 1]
    return full[position]


def reads_cached_rows(value: np.ndarray, position: int) -> bool:
    """Whether a step's tensor holds the rows of every position read from its cache, 0..position."""
    return value.shape[0] == position + 1 and position > 0


def step_differs(rows: np.ndarray, value: np.ndarray, bound: float) -> bool:
    """Whether a step's tensor parts from the full pass's `rows`: another size (a cache that grew by another
    number of positions, or was not read), or a rel_l2 over `bound`."""
    if value.size != rows.size:
        return True
    return not rel_l2(rows.reshape(-1), value.reshape(-1)) <= bound


class PositionRows:
    """The full pass over tokens 0..`position`, taken as it is made: each checkpoint the step recorded is judged
    as its rows arrive and let go; the keys and values (KEPT_WHOLE) are kept whole for the layer being made and for
    the first layer that parts, with its attention output's row at `position`, and nothing is kept past that
    layer. Memory: a few of one layer's tensors, whatever T."""

    def __init__(self, step: dict, position: int, bound: float) -> None:
        self.step, self.position, self.bound = step, position, bound
        self.differs: dict[str, bool] = {}          # name -> whether it parts from the step, once its rows came
        self.tensors: dict[str, np.ndarray] = {}    # the keys and values kept whole, (position + 1, width)
        self.rows: dict[str, np.ndarray] = {}       # the attention outputs' rows at `position`
        self._assembling: dict[str, tuple[np.ndarray, int]] = {}   # name -> (rows so far, how many came)
        self._parted_at: int | None = None          # the flow rank of the first layer (or global) that parts

    def __repr__(self) -> str:
        return f"<PositionRows position={self.position} {len(self.differs)} judged, first {self.first_checkpoint()}>"

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def wants(self, name: str) -> bool:
        return True     # every checkpoint comes here, so that none is held by the capture; most are let go

    def put(self, name: str, block: np.ndarray, start: int = 0) -> None:
        """Rows start.. of checkpoint `name` (its whole shape but on the token axis)."""
        rank = _rank(name)
        if self._parted_at is not None and rank > self._parted_at:
            return
        checkpoint = parse(name)
        key = checkpoint is not None and checkpoint.kind in KEPT_WHOLE
        judged = name in self.step and name != "logits"
        if key or judged:
            self._take(name, np.asarray(block), start, key, judged, rank)
        self._let_go_before(rank)

    def first_checkpoint(self) -> str | None:
        """As first_checkpoint() over the whole pass's trace: the first in data-flow order that parts."""
        return next((name for name in in_flow_order(self.step) if self.differs.get(name)), None)

    def _take(self, name: str, block: np.ndarray, start: int, key: bool, judged: bool, rank: int) -> None:
        value = self.step.get(name)
        block = _without_leading_ones(block, value.ndim if value is not None else 2)
        if key or reads_cached_rows(value, self.position):
            whole = self._assembled(name, block, start)
            if whole is None:
                return
            if key:
                self.tensors[name] = whole
            if judged:
                self._judge(name, full_rows(name, whole, value, self.position), rank)
            return
        axis, rows = token_axis(name), block.shape[token_axis(name)] if block.ndim else 0
        if start <= self.position < start + rows:
            row = np.take(block, self.position - start, axis=axis)
            if name.endswith(".attn_ctx"):
                self.rows[name] = np.array(row)
            self._judge(name, row[:, : self.position + 1] if axis == 1 else row, rank)

    def _assembled(self, name: str, block: np.ndarray, start: int) -> np.ndarray | None:
        """The whole (position + 1, ...) tensor once every row has come, else None; a copy (the forward may
        go on to reuse the block's memory)."""
        tokens = self.position + 1
        if start == 0 and block.shape[0] == tokens:
            return np.array(block, dtype=np.float32)
        rows, came = self._assembling.get(name) or (np.zeros((tokens, *block.shape[1:]), np.float32), 0)
        stop = min(start + block.shape[0], tokens)
        rows[start:stop] = block[: stop - start]
        came += stop - start
        if came < tokens:
            self._assembling[name] = (rows, came)
            return None
        self._assembling.pop(name, None)
        return rows

    def _judge(self, name: str, rows: np.ndarray, rank: int) -> None:
        differs = step_differs(rows, self.step[name], self.bound)
        self.differs[name] = differs
        if differs and (self._parted_at is None or rank < self._parted_at):
            self._parted_at = rank

    def _let_go_before(self, rank: int) -> None:
        """Keys, values and rows of the layers before `rank` that did not part: no diagnosis reads them."""
        for kept in (self.tensors, self.rows):
            for name in [name for name in kept if _rank(name) < rank and _rank(name) != self._parted_at]:
                del kept[name]


def _rank(name: str) -> float:
    """Where a checkpoint lies in the flow, by layer: the global ones before the layers, -1; layer i, i; the rest
    (final norm, logits, any other name) after every layer."""
    checkpoint = parse(name)
    if checkpoint is not None and checkpoint.layer is not None:
        return checkpoint.layer
    return -1 if name in BEFORE_LAYERS else math.inf


def _without_leading_ones(block: np.ndarray, ndim: int) -> np.ndarray:
    while block.ndim > ndim and block.shape[0] == 1:
        block = block[0]
    return block
