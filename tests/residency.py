"""How much of an array this process holds in memory."""

import numpy as np


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of `array`'s pages mapped in this process's page table (/proc/self/pagemap: bit 63, present)."""
    import mmap
    import struct

    first = array.ctypes.data // mmap.PAGESIZE
    last = (array.ctypes.data + array.nbytes - 1) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = struct.unpack(f"<{last - first + 1}Q", pagemap.read((last - first + 1) * 8))
    return sum(1 for entry in entries if entry >> 63) * mmap.PAGESIZE
