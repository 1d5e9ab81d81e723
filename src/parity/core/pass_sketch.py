"""Every checkpoint of a long pass, sketched as it is made: where two passes over the same tokens part.

A candidate's prefill through its cache should compute what its full pass over the prompt
computes. Where it does not, the first checkpoint that parts is where; but holding one pass's
trace to hold the other to is T rows of every checkpoint, and H x T x S attention
probabilities per layer: at a prompt of thousands of tokens, more than a check holds.

A sketch keeps, of each checkpoint X (its rows flattened to (T, W)), the (64, 16) matrix
L X R, with L (64 x T) and R (W x 16) fixed Gaussian matrices, the same for both passes. It
is linear, so the sketch of the difference is the difference of the sketches, and its rel_l2
estimates X's (a Johnson-Lindenstrauss projection of the difference and of X: within about
a third either way where the difference lies in one row, closer where it is spread). That
tells a checkpoint a bug moved (orders of magnitude over the bound) from one rounding moved
(orders under); it locates, it is not a verdict.

    prefill, full = PassSketch(T), PassSketch(T)
    ... each pass run with stream=its sketch (core/streamed.py's wants/put) ...
    first_apart(prefill, full, bound)      # the first checkpoint in data-flow order that parts

Memory: 64 x 16 numbers per checkpoint, L (64 x T) and R (W x 16) per width; time: one
matrix product per block of rows (T x W x 16 multiply-adds per checkpoint).
"""

from __future__ import annotations

import functools

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order, parse

# A prompt longer than this is prefilled with its checkpoints sketched, not recorded (they would be a whole trace,
# held in memory): a decode check's failure at the prefill step is then located by the sketches of the full pass,
# with no causes read from the step's tensors (commands/check/beyond_forward.py).
RECORDED_PREFILL_TOKENS = 512

SKETCH_ROWS = 64       # rows of L: the token axis projected to this many
SKETCH_COLUMNS = 16    # columns of R: each row's values projected to this many
_SEED = 0x5EED


class PassSketch:
    """A stream sink (`wants`/`put`) that keeps the sketch of each checkpoint of a pass over `tokens` tokens."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.widths: dict[str, int] = {}             # name -> W, each row's size (another W: another shape)
        self.came: dict[str, int] = {}               # name -> rows that came; every row once, for a whole sketch
        self.sketches: dict[str, np.ndarray] = {}    # name -> (SKETCH_ROWS, SKETCH_COLUMNS) float64, L X R so far

    def __repr__(self) -> str:
        return f"<PassSketch T={self.tokens} {len(self.sketches)} checkpoints>"

    def wants(self, name: str) -> bool:
        return True     # every checkpoint comes here, so that none is held by the capture

    def put(self, name: str, block: np.ndarray, start: int = 0) -> None:
        """Rows start.. of checkpoint `name` (its whole shape but on the token axis)."""
        checkpoint = parse(name)
        if checkpoint is None or name == "logits":    # a prefill puts only its last position through its head
            return
        block = np.asarray(block)
        per_head = checkpoint.kind == "attn_probs"
        if per_head:
            while block.ndim > 3 and block.shape[0] == 1:                     # (1, H, rows, S) -> (H, rows, S)
                block = block[0]
        if block.ndim < (3 if per_head else 1):
            self.widths[name] = -1                                            # no rows: parts from any pass
            return
        rows = block.shape[1] if per_head else block.shape[0]
        width = int(np.prod(block.shape, dtype=np.int64)) // max(rows, 1)
        if self.widths.setdefault(name, width) != width or start + rows > self.tokens:
            self.widths[name] = -1
            return
        self.came[name] = self.came.get(name, 0) + rows
        projected = _projected(block, per_head)                               # (rows, SKETCH_COLUMNS)
        left = _left(self.tokens)[:, start:start + rows]                      # (SKETCH_ROWS, rows)
        sketch = left @ projected
        self.sketches[name] = self.sketches[name] + sketch if name in self.sketches else sketch

    def whole(self, name: str) -> bool:
        """Whether every row of `name` came once, with one width."""
        return self.widths.get(name, -1) >= 0 and self.came.get(name) == self.tokens


def first_apart(reference: PassSketch, candidate: PassSketch, bound: float) -> str | None:
    """The first checkpoint in data-flow order that both passes made and that parts: made with another shape
    or not whole in one of them, or whose sketches' rel_l2 is over `bound` (or not finite)."""
    for name in in_flow_order(set(reference.widths) & set(candidate.widths)):
        if reference.widths[name] != candidate.widths[name] or reference.whole(name) != candidate.whole(name):
            return name
        if reference.whole(name) and not rel_l2(reference.sketches[name], candidate.sketches[name]) <= bound:
            return name
    return None


def _projected(block: np.ndarray, per_head: bool) -> np.ndarray:
    """The block's rows, each projected by R: (rows, SKETCH_COLUMNS) float64. Attention probabilities (H, rows,
    S) are projected a head at a time (R read as (H, S, SKETCH_COLUMNS)), with no copy of the block."""
    with np.errstate(over="ignore", invalid="ignore"):
        if per_head:
            heads, rows, keys = block.shape
            right = _right(heads * keys).reshape(heads, keys, SKETCH_COLUMNS)
            return np.matmul(block.astype(np.float32, copy=False), right).astype(np.float64).sum(0)
        rows = block.shape[0]
        flat = block.reshape(rows, -1).astype(np.float32, copy=False)
        return (flat @ _right(flat.shape[1])).astype(np.float64)


@functools.lru_cache(maxsize=4)
def _left(tokens: int) -> np.ndarray:
    return np.random.default_rng(_SEED).standard_normal((SKETCH_ROWS, tokens))


@functools.lru_cache(maxsize=64)
def _right(width: int) -> np.ndarray:
    return np.random.default_rng((_SEED, width)).standard_normal((width, SKETCH_COLUMNS), dtype=np.float32)
