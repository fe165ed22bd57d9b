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

import functools
import importlib.util

from pytensor.compile.mode import Mode, get_mode
from pytensor.link.basic import PerformLinker

from sophia.options import COMPILE_MODES, OptionError

AUTO_FUSED = "FAST_COMPILE"
AUTO_LOOPED = "CVM"
"""What ``auto`` means, per graph.

``AUTO_FUSED`` for graphs whose recurrences are all fused (``sophia/graph/fused.py``:
LSTM/GRU without norms, peepholes or clock gate) or absent: the time of a training
step is then in the fused Ops and a few large matmuls, which run numpy in every mode,
so the mode only decides how the thin graph around them is compiled. ``auto`` runs
these graphs' Python implementations in order (FAST_COMPILE's, without its VM) and
only the *merge* rewrite (shared subgraphs computed once): FAST_COMPILE's other
rewrites took ≈ 0.4 s of a ≈ 0.9 s compile and changed no op that matters for speed.
``bench/train_speed.py`` (2-layer LSTM 256, batch 64, BPTT(128; 64), float32, 2 shared
cores) measured this ``auto`` at 1.24–1.25× PyTorch's nn.LSTM in session 10, where
training LSTM layers run on oneDNN (``sophia/graph/onednn_lstm.py``; 16,295–16,933
frames/s, medians of rounds run side by side, with the trainer's malloc setting),
after ≈ 0.7–0.8 s cold / 0.5–0.6 s warm compile; on the fused Ops alone, 1.02–1.05×
there and 1.09–1.35× on earlier hosts, after ≈ 2.6–2.8 s cold / 0.4–0.9 s warm
compile (the cell kernels' machine code cached by ``sophia/graph/native.py``), against CVM ≈
600–2,200 after 42 s / 7 s and FAST_RUN (Numba, which runs the fused Ops in object
mode) ≈ 500 after 28 s.

``AUTO_LOOPED`` for graphs that keep a ``scan`` (or an unrolled loop): FAST_COMPILE
would run that loop op by op in Python; the C backend runs scan's loop compiled
(≈ 2,600–2,800 frames/s with a BLAS linked — 0.43× PyTorch, measured side by side on
a quiet machine — ≈ 500 without, after ≈ 80 s cold and ≈ 12 s warm compile).
"""


def resolve(name: str, looped: bool = False) -> str:
    """The concrete mode ``name`` stands for; ``auto`` depends on whether the graph
    keeps a scan or unrolled recurrence (``looped``)."""
    if name not in COMPILE_MODES:
        raise OptionError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {name!r}")
    if name == "auto":
        return AUTO_LOOPED if looped else AUTO_FUSED
    return name


def compile_mode(name: str, looped: bool = False):
    """The PyTensor ``Mode`` for ``name`` (one of ``sophia.options.COMPILE_MODES``);
    ``auto`` depends on whether the graph keeps a scan or unrolled recurrence."""
    concrete = resolve(name, looped)
    if name == "auto" and concrete == AUTO_FUSED:
        return _fused_auto_mode()
    if concrete == "JAX":
        if importlib.util.find_spec("jax") is None:
            raise OptionError("compile_mode 'JAX' needs the jax package: pip install -e '.[jax]' (or pip install jax)")
        _jax_reductions_keep_their_dtype()
        _jax_persistent_cache()
    return get_mode(concrete)


@functools.cache
def _jax_persistent_cache() -> None:
    """Keep JAX's compiled programs on disk, next to PyTensor's compiled modules
    (``<compiledir>/jax``), unless the user chose a JAX cache directory: a later
    process then loads what XLA compiled instead of compiling it again. Changes
    JAX's configuration for the whole process, once."""
    import os

    import jax
    import pytensor

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", os.path.join(pytensor.config.compiledir, "jax"))


@functools.cache
def _jax_reductions_keep_their_dtype() -> None:
    """Make JAX reductions return the dtype their graph node says.

    PyTensor 3.0's JAX conversion of ``CAReduce`` returns the accumulator's dtype:
    a float32 ``Sum`` accumulates in float64 (PyTensor's default) and comes back as
    float64. Inside a scan — the gradient of every recurrence sums the gradient of
    a broadcast initial state over the batch — JAX then rejects the loop ("carry
    input and carry output must have equal types"). This registers, once per
    process, a conversion that casts the result to the node's output dtype.

    JAX without 64-bit types (its default; ``JAX_ENABLE_X64=1`` turns them on) then
    accumulates those sums in float32 and warns at every trace that it truncated the
    requested float64 (int64) accumulator; that warning (JAX's ``astype``, the
    message for those two dtypes) is silenced here.
    """
    import warnings

    from pytensor.link.jax.dispatch import jax_funcify
    from pytensor.tensor.elemwise import CAReduce

    convert = jax_funcify.dispatch(CAReduce)
    warnings.filterwarnings("ignore", message=r"Explicitly requested dtype (float64|int64) requested in astype",
                            category=UserWarning, module=r"jax\._src\.numpy\.array_methods")

    @jax_funcify.register(CAReduce)
    def careduce_in_output_dtype(op, node=None, **kwargs):
        reduce = convert(op, node=node, **kwargs)
        if node is None:
            return reduce
        dtype = node.outputs[0].dtype

        def careduce(x):
            return reduce(x).astype(dtype)
        return careduce


@functools.cache
def _fused_auto_mode() -> Mode:
    """Python implementations run in order (PyTensor's ``PerformLinker``, which frees
    each intermediate after its last use) with the merge rewrite only; one instance
    per process. FAST_COMPILE's VM linker would give the same numbers, but building
    any VM imports PyTensor's C VM (compiling it in a cold compiledir) and, through
    it, setuptools: ≈ 0.7 s of every process's first compile."""
    return Mode(linker=PerformLinker(), optimizer="merge")
