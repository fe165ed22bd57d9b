"""The BLAS environment: PyTensor's C backend linked to OpenBLAS, OpenBLAS's idle threads.

A pip-installed PyTensor links its C code against no BLAS and warns ("could not
link to a BLAS installation"); its C backend then runs matrix products several
times slower (``bench/train_speed.py``: C scan 531 → 2,319 frames/s once linked).
Where the OpenBLAS development library is installed (Debian: ``apt-get install
libopenblas-dev``), this points ``blas__ldflags`` at it, unless the user already
set that flag. It must run before PyTensor is imported, so ``sophia/__init__``
calls it; it only edits the ``PYTENSOR_FLAGS`` environment variable.

:func:`quiet_openblas_threads` shortens how long OpenBLAS's worker threads spin
after a product before they sleep (``OPENBLAS_THREAD_TIMEOUT``, 2^n cycles; OpenBLAS's
default is 2^28, ≈ 0.1 s). A spinning thread holds a core that the next call
needs: oneDNN's threads in a training step (``sophia/graph/onednn.py``) ran
≈ 1.5× slower behind one (reference model, 2 cores, ``bench/step_profile.py``:
374 ms a step at 2^28, 242–263 ms at 2^20), and the fused Ops' step was 281–314 ms
at 2^20 against 304–350 ms at 2^28. It must be set before numpy loads OpenBLAS,
so ``sophia/__init__`` calls it; a value the user set is kept.
"""
from __future__ import annotations

import os
import sys

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                "/usr/lib", "/usr/local/lib")


def link_system_openblas(environ=os.environ) -> bool:
    """Set ``blas__ldflags=-lopenblas`` in ``PYTENSOR_FLAGS`` if a linkable OpenBLAS
    exists and neither the flag nor PyTensor (already imported) rules it out.
    Returns whether it set the flag."""
    flags = environ.get("PYTENSOR_FLAGS", "")
    if "blas__ldflags" in flags or "pytensor" in sys.modules:
        return False
    if not any(os.path.exists(os.path.join(d, "libopenblas.so")) for d in LIBRARY_DIRS):
        return False
    environ["PYTENSOR_FLAGS"] = ",".join(f for f in (flags, "blas__ldflags=-lopenblas") if f)
    return True


THREAD_TIMEOUT = "20"   # 2^20 cycles, ≈ 0.3 ms


def quiet_openblas_threads(environ=os.environ) -> bool:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` unless the user did or numpy (hence OpenBLAS)
    is already loaded, where it would have no effect. Returns whether it is in force."""
    if "OPENBLAS_THREAD_TIMEOUT" in environ:
        return True
    if "numpy" in sys.modules:
        return False
    environ["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    return True
