"""Give PyTensor's C backend the system's OpenBLAS when it has one.

A pip-installed PyTensor links its C code against no BLAS and warns ("could not
link to a BLAS installation"); its C backend then runs matrix products several
times slower (``bench/train_speed.py``: C scan 531 → 2,319 frames/s once linked).
Where the OpenBLAS development library is installed (Debian: ``apt-get install
libopenblas-dev``), this points ``blas__ldflags`` at it, unless the user already
set that flag. It must run before PyTensor is imported, so ``sophia/__init__``
calls it; it only edits the ``PYTENSOR_FLAGS`` environment variable.
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
