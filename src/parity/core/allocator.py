"""The C allocator's freed memory handed back to the system, for a long input's passes.

A long check's passes free gigabytes between them (the reference's weights once parked,
the calibration copy, each pass's activations), but glibc keeps what a pass freed in
its heaps: the main heap and one arena per thread that allocated (torch's intra-op
threads, llama.cpp's), each up to 64 MiB, trimmed only from its top. At T=2,048 the
default pair's check held 0.8 GB of such free arena pages from the reference's pass to
the end. `return_freed_memory()` makes large blocks go straight back as they are freed;
`hand_back_free_pages()` returns every whole free page of every heap (malloc_trim), at
the boundaries between passes. Nothing happens where the C library is not glibc.
"""

from __future__ import annotations

import functools

# Freed blocks of this size and more go back to the system at once (glibc: mmap'd, not kept in the heap).
RETURNED_BLOCK_BYTES = 4 << 20

_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Have the C allocator hand large freed blocks back at once.

    glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB), so a forward's
    T x hidden activations come from the heap after the first layer, and what they free stays in
    the process: a float64 pass of SmolLM2 at T=2,048 grew 0.5 GB over its 30 layers, at 8,192 about
    2 GB. A fixed threshold (which also stops the raising) keeps each layer's activations its own.
    It costs a page fault per page of each large block, so it is set only for inputs that spill."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, RETURNED_BLOCK_BYTES)


def hand_back_free_pages() -> None:
    """Return every whole free page of every heap and arena to the system (glibc's malloc_trim(0)): what the
    passes before freed in blocks below the mmap threshold. Milliseconds; the next pass faults in what it uses."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
