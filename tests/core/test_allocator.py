"""The allocator's freed memory goes back to the system: measured in a fresh process, on glibc."""

import subprocess
import sys

import pytest

from parity.core.allocator import _glibc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or _glibc() is None,
                                reason="the C library is not glibc")

FREED = """
import mmap, sys
import numpy as np
from parity.core.allocator import return_freed_memory
if sys.argv[1] == "set":
    return_freed_memory()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * mmap.PAGESIZE
first = np.ones(2 << 20); del first               # glibc raises its threshold to a block freed
held = np.ones(2 << 20); before = rss(); del held  # 16 MiB
print((before - rss()) >> 20)
"""


@pytest.mark.parametrize("setting, returned", [("set", True), ("unset", False)])
def test_a_long_inputs_freed_activations_leave_the_process(setting, returned):
    """A block freed after the allocator's threshold rose stays in the heap unless return_freed_memory() fixed it."""
    done = subprocess.run([sys.executable, "-c", FREED, setting], capture_output=True, text=True, check=True)
    assert (int(done.stdout) >= 12) == returned, done.stdout


# 192 MiB in 64 KiB blocks (below any mmap threshold) allocated by a second thread, so in an arena of its own
# as torch's intra-op threads allocate; all freed but the last, which keeps the arena from trimming its top.
ARENA = """
import mmap, sys, threading
import numpy as np
from parity.core.allocator import hand_back_free_pages
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * mmap.PAGESIZE
blocks = []
thread = threading.Thread(target=lambda: blocks.extend(np.ones(8 << 10) for _ in range(3072)))
thread.start(); thread.join()
del blocks[:-1]
before = rss()
if sys.argv[1] == "trim":
    hand_back_free_pages()
print((before - rss()) >> 20)
"""


@pytest.mark.parametrize("trimmed", [True, False])
def test_free_pages_left_in_an_arena_go_back_when_handed_back(trimmed):
    """Small blocks a thread freed stay resident in its arena until hand_back_free_pages()."""
    done = subprocess.run([sys.executable, "-c", ARENA, "trim" if trimmed else "keep"], capture_output=True,
                          text=True, check=True)
    assert (int(done.stdout) >= 150) == trimmed, done.stdout
