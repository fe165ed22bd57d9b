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

AUTO_MODE = "FAST_COMPILE"
"""What ``auto`` means: FAST_COMPILE, measured fastest for training on a CPU.

With LSTM/GRU recurrences fused (``sophia/graph/fused.py``) the time of a training
step is in the fused Ops, which run numpy in every mode, so the mode only decides
how the thin graph around them is compiled. ``bench/train_speed.py`` (2-layer LSTM
256, batch 64, BPTT(128; 64), float32, 2 shared cores) measured FAST_COMPILE at
≈ 5,000 frames/s after 2.4 s cold / 1.4 s warm compile, against CVM ≈ 600–2,200
after 42 s / 7 s and FAST_RUN (Numba, which runs the fused Ops in object mode)
≈ 500 after 28 s; PyTorch's nn.LSTM ≈ 5,900 in the same run. Graphs that keep the
scan path (layer/batch norm, peepholes, clock gate, unrolled) run their scan in
Python under FAST_COMPILE and are much slower there: give them ``compile_mode``
CVM or NUMBA explicitly.
"""


def compile_mode(name: str):
    """The PyTensor ``Mode`` for ``name`` (one of ``sophia.options.COMPILE_MODES``)."""
    if name not in COMPILE_MODES:
        raise OptionError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {name!r}")
    if name == "auto":
        name = AUTO_MODE
    if name == "JAX" and importlib.util.find_spec("jax") is None:
        raise OptionError("compile_mode 'JAX' needs the jax package: pip install jax")
    return get_mode(name)
