"""RowBlocks: a checkpoint a port hands over a block of rows at a time, put together in order.

A port that computes attention a block of query rows at a time calls its Probe once per
block with `start` (capture/torch/probe.py). Where the check stores that checkpoint (a
short input; a long one measures each block as it comes, core/streamed.py), the blocks
are kept here until they cover the token axis, then joined into the tensor a port that
computes it whole would have given:

    blocks = RowBlocks(token_count=T)
    blocks.add("layers.0.attn_probs", block, start=0)   # (H, rows, S): None until rows 0..T are all given
    whole = blocks.add("layers.0.attn_probs", last, start=T - rows)          # (H, T, S)
    leftover = blocks.finish()    # what no block completed: joined where the rows run from 0 with no gap

Memory: the blocks of one checkpoint, then the joined tensor beside them while it is made.
"""

from __future__ import annotations

from parity.core.errors import CaptureError
from parity.core.names import token_axis


class RowBlocks:
    """Blocks of rows by checkpoint, until each covers its token axis."""

    def __init__(self, token_count: int | None) -> None:
        self.token_count = token_count      # the rows a whole checkpoint has; None: known only at the end
        self._blocks: dict[str, list[tuple[int, object]]] = {}   # name -> [(start, block)]

    def __repr__(self) -> str:
        return f"<RowBlocks {len(self._blocks)} checkpoints in part>"

    def add(self, name: str, block, start: int):
        """Keep rows start.. of `name` (canonical layout); the whole tensor once the blocks cover every row."""
        axis = token_axis(name)
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise CaptureError(f"{name}: a Probe's start must be the first row's position, a non-negative int; "
                               f"got {start!r}")
        if block.ndim <= axis:
            raise CaptureError(f"{name}: a block of shape {list(block.shape)} has no token axis ({axis}); give the "
                               "probe the block as the port computes it, e.g. [B, H, rows, S]")
        blocks = self._blocks.setdefault(name, [])
        stop = start + block.shape[axis]
        for given, earlier in blocks:
            if given < stop and start < given + earlier.shape[axis]:
                raise CaptureError(f"{name}: rows {start}..{stop - 1} were given to its probe after rows "
                                   f"{given}..{given + earlier.shape[axis] - 1}: give each row once per pass")
            if _others(earlier.shape, axis) != _others(block.shape, axis):
                raise CaptureError(f"{name}: its probe was given blocks of shapes {list(earlier.shape)} and "
                                   f"{list(block.shape)}: blocks may differ only in their rows (axis {axis})")
        blocks.append((start, block))
        if self.token_count is not None and self._covered(name) == self.token_count:
            return self._joined(name)
        return None

    def finish(self) -> dict:
        """The checkpoints still in part, joined where their rows run from 0 without a gap (the token count was
        not known); a gap, or fewer rows than the pass's tokens, is the port's mistake and raises."""
        joined = {}
        for name in list(self._blocks):
            rows = sorted((start, start + block.shape[token_axis(name)]) for start, block in self._blocks[name])
            ends = [0] + [stop for _, stop in rows]
            gap = next((ends[i] for i, (start, _) in enumerate(rows) if start != ends[i]), None)
            covered = ends[-1]
            if gap is not None or (self.token_count is not None and covered != self.token_count):
                missing = gap if gap is not None else covered
                total = self.token_count if self.token_count is not None else "its"
                raise CaptureError(f"{name}: its probe was given {self._covered(name)} of {total} rows, none from "
                                   f"row {missing}; call it once per block of query rows with start= the block's "
                                   "first row, until every row is given")
            joined[name] = self._joined(name)
        return joined

    def _covered(self, name: str) -> int:
        axis = token_axis(name)
        return sum(block.shape[axis] for _, block in self._blocks[name])

    def _joined(self, name: str):
        import torch

        blocks = [block for _, block in sorted(self._blocks.pop(name), key=lambda given: given[0])]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=token_axis(name))


def _others(shape, axis: int) -> tuple[int, ...]:
    return tuple(size for index, size in enumerate(shape) if index != axis)
