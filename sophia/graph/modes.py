"""Compile modes: the linker and rewrites every ``f_`` function is compiled with.

``auto`` picks the mode measured fastest for Sophia's graphs on a CPU (see
``bench/train_speed.py`` and the README); the others are PyTensor's own modes:

- ``FAST_COMPILE`` — few rewrites, Python implementations: quickest to compile
  (tests use it);
- ``FAST_RUN`` — PyTensor's default optimising mode;
- ``CVM``   — the C backend (needs a compiler and, for speed, a BLAS);
- ``NUMBA`` — the Numba backend (slow first compile, cached afterwards);
- ``JAX``   — the JAX backend, where the ``jax`` package is installed (also GPUs).
"""
from __future__ import annotations

import importlib.util

from pytensor.compile.mode import get_mode

from sophia.options import COMPILE_MODES, OptionError

AUTO_MODE = "FAST_RUN"


def compile_mode(name: str):
    """The PyTensor ``Mode`` for ``name`` (one of ``sophia.options.COMPILE_MODES``)."""
    if name not in COMPILE_MODES:
        raise OptionError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {name!r}")
    if name == "auto":
        name = AUTO_MODE
    if name == "JAX" and importlib.util.find_spec("jax") is None:
        raise OptionError("compile_mode 'JAX' needs the jax package: pip install jax")
    return get_mode(name)
