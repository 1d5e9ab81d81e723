"""Pages of a memory-mapped tensor handed back as a pass moves through it.

A tensor read from a trace file is a view of the file's map (core/trace/lazy.py), and
every page a pass touches stays in the process until the tensor is let go: a pass over
T=8,192 float64 logits (3.2 GB) and its float32 partner holds 4.8 GB when it ends,
though it only ever needed a chunk of each. `PagesBehind` hands back the pages a chunked
pass has left behind (madvise DONTNEED: reading them again pages them in from the file),
so a pass over any tensor holds a few chunks. Arrays that are not views of a map are
left alone, at the cost of one check.
"""

from __future__ import annotations

import mmap

import numpy as np

HAND_BACK_BYTES = 32 << 20   # handed back once this much lies behind the pass


def _map_of(array) -> mmap.mmap | None:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else getattr(base, "obj", None)
    return base


class PagesBehind:
    """For a C-contiguous view of a map: `passed(stop_bytes)` hands back its first `stop_bytes` bytes' pages."""

    def __init__(self, array) -> None:
        self._map = _map_of(array) if isinstance(array, np.ndarray) and array.flags.c_contiguous else None
        self._start = self._released = 0
        if self._map is not None and hasattr(self._map, "madvise") and array.nbytes >= 2 * HAND_BACK_BYTES:
            origin = np.frombuffer(self._map, np.uint8, 1).__array_interface__["data"][0]
            self._start = self._released = array.__array_interface__["data"][0] - origin
        else:
            self._map = None

    def __repr__(self) -> str:
        return f"<PagesBehind {'mapped' if self._map is not None else 'not mapped'}>"

    def passed(self, stop_bytes: int) -> None:
        """The pass has read everything before byte `stop_bytes` of the array."""
        if self._map is None:
            return
        end = self._start + stop_bytes
        end -= end % mmap.PAGESIZE
        if end - self._released < HAND_BACK_BYTES:
            return
        start = self._released - self._released % mmap.PAGESIZE
        try:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            self._map = None   # only memory accounting is lost
            return
        self._released = end
