"""Tensors read on demand: a read-only mapping from name to array that loads one tensor at a time.

A loaded trace knows every tensor's shape and dtype from its headers, checked against
the file's size, and reads a tensor's data only when it is looked up: memory-mapped
where the bytes lie in the file as stored, decoded into one buffer of the validated
size otherwise (deflated .npz members, bfloat16 widened to float32: into a mapped
unlinked file when large, core/trace/readers.py). The last few
tensors looked up are kept, so code that reads a tensor twice pays once and two
traces larger than memory compare holding about one checkpoint pair at a time.

A file that holds many tensors (a .safetensors or an .npz) is mapped once, whole,
and its tensors are views of that one map: no copy, one descriptor per file. When a
tensor leaves the kept few, its pages are handed back to the kernel (madvise
DONTNEED): its bytes stay readable (they are read again from the page cache if
touched), but they no longer count against this process, so memory stays bounded
by what is in use whatever the trace's size.
"""

from __future__ import annotations

import math
import mmap
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from parity.core.errors import TraceError

_KEPT = 2  # tensors kept per trace after a lookup: the one being compared and one more
_READ_BELOW_BYTES = 1 << 20  # smaller tensors are read, larger ones memory-mapped
RELEASE_BYTES = 8 << 20      # a shared map hands pages back once this much is no longer kept


@dataclass(frozen=True)
class TensorSource:
    """One tensor's checked description and how to read its data."""

    shape: tuple[int, ...]          # as the caller sees it (a leading batch axis of 1 dropped)
    dtype: str                      # as produced: float32, bfloat16, ...
    load: Callable[[], np.ndarray]  # returns the array in `shape`
    load_head: Callable[[int], np.ndarray] | None = None  # the first n rows alone, where the layout allows
    release: Callable[[], None] | None = None  # hands a mapped tensor's pages back once it is no longer kept

    def __repr__(self) -> str:
        return f"<TensorSource {self.dtype}{list(self.shape)}>"


class LazyTensors(Mapping):
    """name -> np.ndarray, each array read when first looked up."""

    def __init__(self, sources: Mapping[str, TensorSource]) -> None:
        self._sources = dict(sources)
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()

    def __repr__(self) -> str:
        return f"<LazyTensors {len(self._sources)} tensors, {len(self._kept)} read>"

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._kept:
            self._kept.move_to_end(name)
            return self._kept[name]
        source = self._sources[name]
        array = source.load()
        if tuple(array.shape) != source.shape:  # a reader bug, never the file's fault
            raise TraceError(f"tensor '{name}' read as shape {list(array.shape)}, declared {list(source.shape)}")
        self._kept[name] = array
        dropped = [self._kept.popitem(last=False)[0] for _ in range(len(self._kept) - _KEPT)]
        for old in dropped:
            release = self._sources[old].release
            if release is not None:
                release()
        return array

    def forget(self) -> None:
        """Drop the kept tensors and hand their pages back: a pass over the trace is done, and what
        follows (the diagnosis) reads a few tensors of its own."""
        for name in list(self._kept):
            release = self._sources[name].release
            if release is not None:
                release()
        self._kept.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, without reading its data."""
        return self._sources[name].shape

    def head(self, name: str, count: int) -> np.ndarray:
        """The first `count` rows (along axis 0) of a tensor, reading only those where the file allows."""
        source = self._sources[name]
        if name in self._kept or source.load_head is None or not source.shape:
            return self[name][:count]
        return source.load_head(min(count, source.shape[0]))

    def dtypes(self) -> dict[str, str]:
        return {name: source.dtype for name, source in self._sources.items()}

    def with_arrays(self, arrays: Mapping[str, np.ndarray]) -> "LazyTensors":
        """These tensors and `arrays` (held), as one mapping: what is read lazily stays so."""
        held = {name: TensorSource(tuple(array.shape), str(array.dtype), load=lambda array=array: array)
                for name, array in arrays.items()}
        return LazyTensors({**self._sources, **held})


def drop_batch_axis(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A leading batch axis of size 1 is dropped on read: [1, T, D] is [T, D]."""
    return shape[1:] if len(shape) >= 3 and shape[0] == 1 else shape


def head_of(load_rows: Callable[[int, tuple[int, ...]], np.ndarray], stored_shape: tuple[int, ...]):
    """A `load_head` for a C-ordered stored tensor: its first rows are a prefix of its bytes, also when a
    leading batch axis of 1 is dropped. `load_rows(count, shape)` maps that prefix in `shape`."""
    batch = drop_batch_axis(stored_shape) != stored_shape

    def load_head(count: int) -> np.ndarray:
        rest = stored_shape[2:] if batch else stored_shape[1:]
        return load_rows(count, (count, *rest))

    return load_head


class SharedMapping:
    """One read-only map of a whole checked file, made on first use and shared by the tensors in it."""

    def __init__(self, file_ref) -> None:
        self._file_ref = file_ref
        self._map: mmap.mmap | None = None
        self._pending: list[tuple[int, int]] = []   # released ranges not yet handed back: [start, end)
        self._pending_bytes = 0

    def __repr__(self) -> str:
        return f"<SharedMapping {self._file_ref.shown} {'mapped' if self._map is not None else 'not mapped'}>"

    def array(self, offset: int, dtype: np.dtype, shape: tuple[int, ...], *, fortran: bool = False) -> np.ndarray:
        """The array stored at `offset` (checked by the caller to lie in the file), read-only, without a copy."""
        count = math.prod(shape)
        if count == 0:
            return np.zeros(shape, dtype)
        array = np.frombuffer(self._mapping(), dtype, count, offset)
        return array.reshape(shape, order="F" if fortran else "C")

    def release(self, offset: int, nbytes: int) -> None:
        """Let the kernel drop the pages of [offset, offset + nbytes) from this process; reading them again
        pages them back in from the file. Ranges are gathered and handed back RELEASE_BYTES at a time,
        neighbours merged, so that small tensors do not cost a system call each."""
        if self._map is None or nbytes <= 0 or not hasattr(self._map, "madvise"):
            return
        self._pending.append((offset, offset + nbytes))
        self._pending_bytes += nbytes
        if self._pending_bytes < RELEASE_BYTES:
            return
        ranges, self._pending, self._pending_bytes = _merged(self._pending), [], 0
        for start, end in ranges:
            start -= start % mmap.PAGESIZE
            try:
                self._map.madvise(mmap.MADV_DONTNEED, start, min(end, len(self._map)) - start)
            except (OSError, ValueError):
                pass  # only memory accounting is lost

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            file_ref = self._file_ref
            try:
                with file_ref.open() as file:
                    self._map = mmap.mmap(file.fileno(), file_ref.size, prot=mmap.PROT_READ)
            except (OSError, ValueError, OverflowError) as error:
                raise TraceError(f"{file_ref.shown}: cannot map its {file_ref.size:,} bytes ({error}); free "
                                 "address space, or compare fewer checkpoints (--checkpoints)") from None
        return self._map


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) ranges, sorted, with those that touch or overlap joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def mapped(file_ref, offset: int, dtype: np.dtype, shape: tuple[int, ...], *, fortran: bool = False) -> np.ndarray:
    """The array stored at `offset` of a checked file, read-only: memory-mapped (no copy) when large,
    read when small (a map holds a file descriptor for as long as the array lives)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    if nbytes <= _READ_BELOW_BYTES:
        array = np.frombuffer(file_ref.read(offset, nbytes), dtype).reshape(shape, order="F" if fortran else "C")
        return array  # read-only: a view of immutable bytes
    try:
        with file_ref.open() as file:
            array = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except (OSError, ValueError, OverflowError) as error:
        raise TraceError(f"{file_ref.shown}: cannot map {nbytes:,} bytes at offset {offset} ({error}); "
                         "free memory or address space, or compare fewer checkpoints (--checkpoints)") from None
    return array.view(np.ndarray)
