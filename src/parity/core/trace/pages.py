"""Pages of memory-mapped tensors handed back as a pass moves through them.

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


class _MappedArray:
    """One C-contiguous view of a map: where it starts in the map, and how far its pages were handed back."""

    def __init__(self, array: np.ndarray, mapping: mmap.mmap) -> None:
        origin = np.frombuffer(mapping, np.uint8, 1).__array_interface__["data"][0]
        self.map, self.itemsize = mapping, array.itemsize
        self.start = self.released = array.__array_interface__["data"][0] - origin

    def passed(self, elements: int) -> bool:
        """Hand back the pages of the first `elements`; False when the map refuses (nothing more is tried)."""
        end = self.start + elements * self.itemsize
        end -= end % mmap.PAGESIZE
        if end - self.released < HAND_BACK_BYTES:
            return True
        start = self.released - self.released % mmap.PAGESIZE
        try:
            self.map.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            return False   # only memory accounting is lost
        self.released = end
        return True


class PagesBehind:
    """Arrays read front to back together (a reference and its candidate, of one shape): `passed(n)` hands back the
    pages of each one's first n elements, for those that are large C-contiguous views of a map."""

    def __init__(self, *arrays) -> None:
        self._mapped = []
        for array in arrays:
            if isinstance(array, np.ndarray) and array.flags.c_contiguous and array.nbytes >= 2 * HAND_BACK_BYTES:
                mapping = _map_of(array)
                if mapping is not None and hasattr(mapping, "madvise"):
                    self._mapped.append(_MappedArray(array, mapping))

    def __repr__(self) -> str:
        return f"<PagesBehind {len(self._mapped)} mapped>"

    def passed(self, elements: int) -> None:
        """The pass has read each array's first `elements` elements."""
        self._mapped = [mapped for mapped in self._mapped if mapped.passed(elements)]
