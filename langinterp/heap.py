"""Keep freed memory in the process instead of handing it back to the OS after every training step.

A training step allocates and frees the same large buffers every time (a layer's output, its weight gradient,
the kernel's padded scratch: megabytes each). glibc's malloc gives memory at the top of its heap back to the
OS whenever more than its trim threshold lies free there, and whether that happens depends on where in the
heap each buffer landed: in some processes it happened every step, and the next step's buffers came back one
page fault at a time. By benchmarks/heap.py (benchmarks/README.md, *Freed memory and page faults*), with
glibc's defaults the 128-wide layer with 128 segments took up to 1.8x as long a step in the processes that
faulted most; with the thresholds set here no process faulted that often. Setting the trim threshold (and with
it, as glibc then needs, a fixed threshold above which blocks get their own mapping) keeps that memory.

:func:`keep_freed_memory` is called by the CLI and the benchmarks before any work; scripts that use the
layers directly can call it too. It changes malloc's settings for the whole process, so the library itself
never calls it.
"""

import ctypes
import ctypes.util
from functools import cache

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Free memory at the top of the heap kept before any is returned: many training steps' worth of buffers
# below MMAP_THRESHOLD (larger ones are mapped and unmapped by themselves, untouched by this setting).
TRIM_THRESHOLD = 256 << 20
# Blocks from this size on get their own mapping (freed straight back to the OS): 32 MiB, the largest value
# glibc accepts on 64-bit systems. Setting the trim threshold switches off glibc's own adjustment of this
# one, which would otherwise stay at its 128 KiB default and map every large buffer anew.
MMAP_THRESHOLD = 32 << 20


@cache
def keep_freed_memory() -> bool:
    """Set glibc's trim and mapping thresholds (once per process); False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
