"""Keep the C library's heap from handing memory back to the kernel, so that repeated steps stop page-faulting.

glibc returns freed memory at the top of its heap to the kernel (``malloc_trim``) and serves large blocks with
``mmap`` / ``munmap``. A CPU forward frees and allocates the same large activations every step, so whether a step
gets pages the kernel must map afresh (tens of thousands of minor page faults per ResNet-50 forward at batch 8,
224²) depends on the heap's history, and it changes from run to run and from model to model. Timing two models
against each other, that moves their ratio more than SE does (README, Performance). :func:`steady_heap` sets
glibc's ``mallopt`` for the rest of the process: no trimming, and every block from the heap (no ``mmap``), so after
a warm-up step the heap has grown to what a step needs and later steps reuse its pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_KEEP_ALL = 2**31 - 1  # the largest int: never trim

DESCRIPTION = "steady (glibc mallopt: no trimming, no mmap)"


def steady_heap() -> str | None:
    """Make glibc keep freed memory for the rest of the process; return what was set, None where the C library
    is not glibc (or refused), and nothing changes."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if libc.mallopt(M_TRIM_THRESHOLD, _KEEP_ALL) != 1 or libc.mallopt(M_MMAP_MAX, 0) != 1:
        return None
    return DESCRIPTION
