"""What rebuilds the reference's attention probabilities a block of query rows at a time, kept in their place.

A layer's probabilities are (H, T, S); what makes them is (B, H, T, hd) of queries,
(B, Hkv, S, hd) of keys and values after RoPE, the mask and a few scalars (scaling,
softcap, sliding window). While the reference runs, its eager attention hands each
layer's call to ProbabilityRecipes (capture/hf/attention.py) instead of making the
probabilities whole: the tensors go to files in `directory` (the mask once per
distinct mask), the call's module and options stay in memory. `rows(name, start, stop)`
then runs the same implementation on those query rows with the same rows of the mask:
the probabilities the capture would have recorded, to the last bits of a matmul's
summation order (the row blocks of capture/hf/attention.py rest on the same identity).

Memory: one layer's keys and values (2 x B x Hkv x S x hd) and one block's rows;
disk: per layer 2 x (H + 2 Hkv) x T x hd x itemsize, plus T x S per distinct mask.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parity.capture.hf.attention import ROW_BLOCK_BYTES


@dataclass(frozen=True)
class _Stored:
    """A tensor in a file, its token axis moved first so that a block of rows is one contiguous read."""

    path: Path
    shape: tuple[int, ...]      # as stored: (T, ...) with the rest of the axes in order
    dtype: np.dtype
    axis: int                   # where the token axis goes back

    def rows(self, start: int, stop: int):
        import torch

        row = math.prod(self.shape[1:])
        values = np.fromfile(self.path, dtype=self.dtype, count=(stop - start) * row,
                             offset=start * row * self.dtype.itemsize).reshape(stop - start, *self.shape[1:])
        return torch.from_numpy(values).movedim(0, self.axis)

    def whole(self):
        return self.rows(0, self.shape[0])


def _store(tensor, path: Path, axis: int) -> _Stored:
    values = tensor.detach().movedim(axis, 0).contiguous().cpu().numpy()
    values.tofile(path)
    return _Stored(path, tuple(values.shape), values.dtype, axis)


@dataclass(frozen=True)
class _Call:
    implementation: Any
    module: Any
    query: _Stored       # (B, H, T, hd), stored (T, B, H, hd)
    key: _Stored         # (B, Hkv, S, hd)
    value: _Stored
    mask: _Stored | None  # (B, 1|H, T, S), stored (T, B, 1|H, S); None where the call had none
    args: tuple
    kwargs: dict
    shape: tuple[int, ...]   # the probabilities' (H, T, S): a batch of one, as the trace holds them


class ProbabilityRecipes:
    """The reference's attention probabilities by name, rebuilt on demand (core/streamed.py's ReferenceRows)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._calls: dict[str, _Call] = {}
        self._masks: list[tuple[Any, _Stored]] = []    # (weak reference to the mask, where it is stored)
        self._layer: tuple[str, Any, Any] | None = None  # the keys and values of the last layer rebuilt

    def __repr__(self) -> str:
        return f"<ProbabilityRecipes {len(self._calls)} layers in {self.directory}>"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._calls)

    def keep(self, name: str, implementation, module, query, key, value, mask, args: tuple, kwargs: dict) -> None:
        """Keep what rebuilds `name` (a later run of the same layer replaces it)."""
        batch, heads, tokens = query.shape[:3]
        stem = self.directory / name
        self._calls[name] = _Call(
            implementation, module, _store(query, stem.with_suffix(".query"), 2),
            _store(key, stem.with_suffix(".key"), 0), _store(value, stem.with_suffix(".value"), 0),
            None if mask is None else self._mask(mask), args, dict(kwargs),
            (*((batch,) if batch != 1 else ()), heads, tokens, key.shape[-2]))

    def _mask(self, mask) -> _Stored:
        """The mask's file: written once per distinct mask (layers of one kind share theirs)."""
        for kept, stored in self._masks:
            if kept() is mask:
                return stored
        stored = _store(mask, self.directory / f"mask{len(self._masks)}", 2)
        self._masks.append((weakref.ref(mask), stored))
        return stored

    def shape(self, name: str) -> tuple[int, ...]:
        return self._calls[name].shape

    def rows_per_block(self, name: str) -> int:
        """Rows whose probabilities stay within the row block of capture/hf/attention.py."""
        heads, columns = self._calls[name].shape[-3], self._calls[name].shape[-1]
        return max(1, ROW_BLOCK_BYTES // (heads * columns * max(self._calls[name].query.dtype.itemsize, 4)))

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """The probabilities of query rows [start, stop): (H, rows, S), in the reference's precision."""
        import torch

        call = self._calls[name]
        key, value = self._keys_and_values(name, call)
        mask = None if call.mask is None else call.mask.rows(start, stop)
        # Rows are asked for while another model's attention runs (a block of the calibration run's, measured
        # as it is made), under whatever that run changes torch with (llama.cpp's KV cache rounding is a
        # TorchFunctionMode): the reference's rows are the reference's, computed without it.
        with torch.no_grad(), torch._C.DisableTorchFunction():
            _, probabilities = call.implementation(call.module, call.query.rows(start, stop), key, value, mask,
                                                   *call.args, **call.kwargs)
        probabilities = probabilities.detach().cpu().numpy()                 # (B, H, rows, S)
        return probabilities[0] if len(call.shape) == 3 else probabilities

    def _keys_and_values(self, name: str, call: _Call):
        if self._layer is None or self._layer[0] != name:
            self._layer = (name, call.key.whole(), call.value.whole())
        return self._layer[1:]
