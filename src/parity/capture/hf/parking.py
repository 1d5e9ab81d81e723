"""A model's weights parked in a file and mapped back: resident only while a pass reads them.

A long check keeps the float64 reference loaded from its first pass to its last (the
calibration copy, the rebuilt attention probabilities, the decode checks and the
weight rounding read it), but between those passes its weights only take room: 1.1 GB
for SmolLM2's 135M parameters, a third of the check's memory at T=8,192. Parked, each
floating parameter's data lives in one file of the spill directory, mapped privately
in place of its memory; `rest()` hands the mapping's pages back to the kernel, and a
pass that reads a weight again reads it from the page cache or the disk, unchanged.
Each module's own weights are also handed back as soon as its forward returns, so a
pass holds one module's weights at a time (the largest: SmolLM2's embedding, 226 MB
in float64) and a long check can park the reference before its first pass. A weight
read outside its module's forward (a tied head read as the embedding's matrix) stays
until the next rest().

Memory: one module's weights during a pass, plus what was read outside a forward since
the last rest(); disk: the weights' bytes.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

_ALIGN = 64   # each tensor's bytes start on a cache line (and on its dtype's alignment)


class ParkedWeights:
    """`model`'s floating parameters written to `path` and mapped back in place of their memory."""

    def __init__(self, model, path: str | Path) -> None:
        import torch

        self.path = Path(path)
        parameters = list({id(p): p for p in model.parameters()
                           if p.is_floating_point() and p.device.type == "cpu" and p.dtype != torch.bfloat16}.values())
        offsets, size = [], 0
        with open(self.path, "wb") as file:
            for parameter in parameters:
                size = -(-size // _ALIGN) * _ALIGN
                file.seek(size)
                values = parameter.detach().contiguous().numpy()
                file.write(values.reshape(-1).view(np.uint8).data)
                offsets.append(size)
                size += values.nbytes
            file.truncate(max(size, 1))
        with open(self.path, "rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        spans = {}   # id(parameter) -> (offset, bytes) in the file
        for parameter, offset in zip(parameters, offsets):
            dtype = torch.empty(0, dtype=parameter.dtype).numpy().dtype
            mapped = np.frombuffer(self._map, dtype=dtype, count=parameter.numel(), offset=offset)
            spans[id(parameter)] = (offset, mapped.nbytes)
            parameter.data = torch.from_numpy(mapped.reshape(tuple(parameter.shape)))
        for module in model.modules():
            if own := [spans[id(p)] for p in module.parameters(recurse=False) if id(p) in spans]:
                module.register_forward_hook(self._releasing(own))
        self.nbytes = size
        self.count = len(parameters)

    def __repr__(self) -> str:
        return f"<ParkedWeights {self.count} tensors, {self.nbytes / 2**20:.0f} MiB at {self.path}>"

    def rest(self) -> None:
        """Hand the pages the passes read back to the kernel (the weights stay readable, from the file)."""
        self._hand_back(0, len(self._map))

    def _releasing(self, spans: list[tuple[int, int]]):
        """A forward hook that hands back the pages of `spans` (a module's own weights) once the module ran."""

        def release(module, inputs, output) -> None:
            for offset, nbytes in spans:
                self._hand_back(offset, nbytes)

        return release

    def _hand_back(self, offset: int, nbytes: int) -> None:
        """Drop the pages holding bytes [offset, offset + nbytes) from this process. A page shared with a
        neighbouring weight goes too; a read faults it back from the file, unchanged."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = offset - offset % mmap.PAGESIZE
        end = min(-(-(offset + nbytes) // mmap.PAGESIZE) * mmap.PAGESIZE, len(self._map))
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
