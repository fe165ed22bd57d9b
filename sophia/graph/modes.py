"""Compile modes: the linker and rewrites every ``f_`` function is compiled with.

``auto`` picks the mode measured fastest for Sophia's graphs on a CPU (see
``bench/train_speed.py``, ``bench/hf_step.py`` and their figures in
``bench/README.md``; :func:`hessian_free_mode` for Hessian-free's functions); the
others are PyTensor's own modes:

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

import pytensor
from pytensor.compile.mode import Mode, get_mode
from pytensor.link.basic import PerformLinker

from sophia.options import COMPILE_MODES, OptionError

AUTO_FUSED = "FAST_COMPILE"
AUTO_LOOPED = "CVM"
"""What ``auto`` means, per graph.

``AUTO_FUSED`` for graphs whose recurrences are all fused (``sophia/graph/engines/fused.py``:
LSTM/GRU without norms, peepholes or clock gate) or absent: the time of a training
step is then in the fused Ops and a few large matmuls, which run numpy in every mode,
so the mode only decides how the thin graph around them is compiled. ``auto`` runs
these graphs' Python implementations in order (FAST_COMPILE's, without its VM) and
only the *merge* rewrite (shared subgraphs computed once): FAST_COMPILE's other
rewrites cost a large part of the compile and change no op that matters for speed.
In training graphs the LSTM layers run on oneDNN where it applies
(``sophia/graph/engines/onednn_lstm.py``), the other recurrences on the fused Ops, whose cell
kernels' machine code is cached by ``sophia/graph/engines/native.py``. CVM and FAST_RUN
(Numba, which runs the fused Ops in object mode) compile far longer and run these
graphs slower.

``AUTO_LOOPED`` for graphs that keep a ``scan`` (or an unrolled loop): FAST_COMPILE
would run that loop op by op in Python; the C backend runs scan's loop compiled,
fastest with a BLAS linked (``sophia/_blas.py``).

``bench/train_speed.py`` measures each mode's training frames/s and cold and warm
compile time on a reference model, against PyTorch's ``nn.LSTM``; its figures are in
``bench/README.md``.
"""


def resolve(name: str, looped: bool = False) -> str:
    """The concrete mode ``name`` stands for; ``auto`` depends on whether the graph
    keeps a scan or unrolled recurrence (``looped``)."""
    if name not in COMPILE_MODES:
        raise OptionError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {name!r}")
    if name == "auto":
        return AUTO_LOOPED if looped else AUTO_FUSED
    return name


def hessian_free_mode(name: str) -> str:
    """The concrete mode of Hessian-free's functions for ``compile_mode`` ``name``:
    ``auto`` is JAX where the jax package is installed (XLA compiles the scan and its
    R-op as one loop; an HF step took a third of the C backend's time on a 2-core CPU,
    ``bench/hf_step.py``, figures in ``bench/README.md``), else what ``auto`` gives any
    graph that keeps a scan."""
    if name == "auto":
        return "JAX" if importlib.util.find_spec("jax") is not None else resolve(name, looped=True)
    return resolve(name, looped=True)


def compile_mode(name: str, looped: bool = False):
    """The PyTensor ``Mode`` for ``name`` (one of ``sophia.options.COMPILE_MODES``);
    ``auto`` depends on whether the graph keeps a scan or unrolled recurrence.

    Where PyTensor links no BLAS (``blas__ldflags`` empty, ``sophia/_blas.py``), the C
    backend's graphs are compiled without the rewrite that fuses products into
    ``Gemm``: its C code would then call a slower stand-in for BLAS (and warn), while
    the plain products it leaves run numpy's own BLAS.
    """
    concrete = resolve(name, looped)
    if name == "auto" and concrete == AUTO_FUSED:
        return _fused_auto_mode()
    if concrete == "JAX":
        if importlib.util.find_spec("jax") is None:
            raise OptionError("compile_mode 'JAX' needs the jax package: pip install -e '.[jax]' (or pip install jax)")
        _jax_reductions_keep_their_dtype()
        _jax_persistent_cache()
    if concrete == "CVM" and not pytensor.config.blas__ldflags:
        return _c_backend_without_gemm()
    return get_mode(concrete)


@functools.cache
def _c_backend_without_gemm() -> Mode:
    """CVM without the ``Gemm`` fusion; one instance per process."""
    return get_mode("CVM").excluding("gemm_optimizer")


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
    it, setuptools, which every process's first compile would then wait for
    (``bench/step_profile.py`` shows the compile's phases)."""
    return Mode(linker=PerformLinker(), optimizer="merge")
