"""Keep freed memory in the process, so training steps stop re-faulting it.

Every ``f_train_step`` allocates the same large arrays (the reference model of
``bench/train_speed.py``: 32 MiB for each layer's input products, activations and
their gradients). glibc serves blocks this large with ``mmap`` and unmaps them
when they are freed, so each step gets fresh pages from the kernel, which faults
and zeroes them on first touch — inside the BLAS calls and cell kernels that
write them (``bench/step_profile.py`` shows each Op's time per step).

:func:`keep_freed_memory` tells glibc's ``malloc`` (``mallopt``) to serve large
blocks from its heap and not to give freed memory back to the kernel, so the next
step reuses pages that are already mapped. Memory then stays at the run's peak
instead of dropping between steps — the trainer's peak is every step's anyway.
It changes the whole process; the trainer calls it once at the start of a run
(the serving side does not: its arrays are small). Without glibc (macOS, musl,
Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_MAX = -4
_NEVER_TRIM = 2 ** 31 - 1   # the largest trim threshold mallopt takes (an int): 2 GiB free at the top


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory mapped (no ``mmap`` for large
    blocks, no trimming of the heap). Returns whether it was applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version      # glibc only: musl has mallopt as a stub
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
