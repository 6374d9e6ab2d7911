"""rledit_env.allocator: freed blocks of a few MB stay in the heap for reuse (glibc only)."""

import ctypes
import ctypes.util
import sys

import pytest

from rledit_env.allocator import retain_freed_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]  # fmt: skip


def _glibc():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("no glibc >= 2.33 here")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def test_a_freed_block_of_a_few_mb_stays_in_the_heap():
    libc = _glibc()
    assert retain_freed_memory()
    size = 24 * 1024 * 1024  # above glibc's default mmap threshold, below the tuned one
    block = libc.malloc(size)
    assert block
    ctypes.memset(block, 1, size)
    libc.free(block)
    # with glibc's defaults the block would be mmapped and unmapped on free, not kept as free heap
    assert libc.mallinfo2().fordblks >= size
