"""The cell kernels as native functions, loaded from disk without Numba's start-up.

``sophia/graph/engines/kernels.py`` writes the per-frame cell kernels for Numba. Calling a
Numba function the first time in a process — even one Numba has cached — starts
Numba's compiler: its typing and lowering registries and ``scipy.linalg``, a large
part of a warm compile (``bench/step_profile.py`` times each kernel's start). This
module compiles each kernel once, as a C-callable function over raw pointers
(``numba.cfunc``), keeps its machine code on disk, and in later processes loads that
code with llvmlite's JIT linker alone, in milliseconds.

:func:`kernel` ``(name, dtype, flags)`` returns a ``ctypes`` function; the
``*_options_*`` and ``*_bn_cell*`` kernels are compiled for the option bits
``flags``, a constant of their code (0 for the others). Its arguments are the
addresses of the kernel's arrays, in the order of ``kernels.<name>`` (batch norm:
``kernels_bn.<name>``), then ``batch``, ``i`` (the layer width; for
``layer_norm_rows*``, ``clock_openness*`` and ``batch_norm_frame*``, the rows and
their width) and ``one`` (1 in ``dtype``). Every array must be C-contiguous with the shape its kernel
documents; the gradient accumulators (``db``, ``d_gamma`` …) and batch norm's
``scratch`` are float64, the others are ``dtype``. Nothing checks the addresses:
passing a wrong one corrupts memory, so only the fused Ops (``fused*.py``) call these.

The cache lives in ``<compiledir>/sophia_kernels`` (PyTensor's compiledir, like the
JAX cache in ``sophia/graph/modes.py``), one file per kernel and dtype, named by a
hash of everything the machine code depends on: the source of both modules, the
Numba and llvmlite versions, the CPU and its features. Files of older versions stay
until the folder is deleted. A file is written to a temporary name and renamed, so
runs started side by side never read half a file, and carries a SHA-256 of its code,
so a damaged one is compiled again rather than loaded. Where loading fails in any
other way, the kernel runs as Numba compiled it in this process.

A kernel is compiled under a lock file beside its cache file (``.o.lock``), so runs
side by side compile it once. Compiling a function whose Ops call kernels
(:class:`CallsKernel`) hands the missing ones to a helper process (:func:`prefetch`),
which compiles them from the last needed while the function's first call compiles
them from the first: on two cores a cold cache costs about half the kernels' compile time.

Example
-------
>>> import numpy as np
>>> a, xa, bias = np.zeros((2, 12), np.float32), np.zeros((2, 12), np.float32), np.zeros(12, np.float32)
>>> c_prev, c, h = np.ones((2, 3), np.float32), np.empty((2, 3), np.float32), np.empty((2, 3), np.float32)
>>> cell = kernel("lstm_cell", np.float32)       # batch 2, width 3: the gates are 12 wide
>>> cell(*[x.ctypes.data for x in (a, xa, bias, c_prev, c, h)], 2, 3, 1.0)
>>> float(c[0, 0])                               # σ(0) · 1 + σ(0) · tanh(0)
0.5
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import inspect
import os
import subprocess
import sys
import tempfile
import warnings

try:
    import fcntl
except ImportError:                       # pragma: no cover - not POSIX: no lock files, no helper
    fcntl = None

import numpy as np

from sophia.graph.engines import blocks, kernels, kernels_bn
from sophia.graph.engines.kernels_bn import SCRATCH_ROWS

MAGIC = b"sophia-kernel-1\n"

# The arrays each kernel takes, in order: False for arrays of the layer's dtype,
# True for float64 ones (gradient accumulators, batch-norm scratch). Then batch, i and one follow.
_ARRAYS = {
    "lstm_cell": (False,) * 6,
    "lstm_cell_grad": (False,) * 8 + (True,),
    "gru_cell": (False,) * 7,
    "gru_cell_grad": (False,) * 7 + (True,),
    "lstm_options_cell": (False,) * 19,
    "lstm_options_cell_grad": (False,) * 21 + (True,) * 5,
    "gru_options_cell": (False,) * 13,
    "gru_options_cell_grad": (False,) * 13 + (True,) * 3,
    "layer_norm_rows": (False,) * 6,
    "layer_norm_rows_grad": (False,) * 5 + (True,) * 2,
    "clock_openness": (False,) * 6,
    "clock_openness_grad": (False,) * 6 + (True,) * 3,
    "batch_norm_frame": (False,) * 7 + (True,),
    "batch_norm_frame_grad": (False,) * 5 + (True,) * 3,
    "lstm_bn_cell": (False,) * 20 + (True,),
    "lstm_bn_cell_grad": (False,) * 21 + (True,) * 7,
    "gru_bn_cell": (False,) * 13 + (True,),
    "gru_bn_cell_grad": (False,) * 13 + (True,) * 4,
}
# The kernels compiled per set of option bits (``kernels.PEEPHOLE`` | ...).
_FLAGGED = frozenset(name for name in _ARRAYS if "_options_" in name or "_bn_cell" in name)

# The gates per unit of each kernel's layer: its gate rows are g = GATES · i wide.
GATES = {"lstm_cell": 4, "lstm_cell_grad": 4, "gru_cell": 3, "gru_cell_grad": 3,
         "lstm_options_cell": 4, "lstm_options_cell_grad": 4, "gru_options_cell": 3, "gru_options_cell_grad": 3,
         "layer_norm_rows": 1, "layer_norm_rows_grad": 1, "clock_openness": 1, "clock_openness_grad": 1,
         "batch_norm_frame": 1, "batch_norm_frame_grad": 1, "lstm_bn_cell": 4, "lstm_bn_cell_grad": 4,
         "gru_bn_cell": 3, "gru_bn_cell_grad": 3}
# The shape of each array a kernel takes, in order: [B][i] (1), [B][g] ("g"), [g] (0), [i] ("i"),
# [3i] ("3i"), [B] ("b"), one value ("1"), one row of batch statistics [1][g] ("1g") or [1][i]
# ("1i"), the batch-norm scratch [SCRATCH_ROWS][g] ("sg"); B and i are the kernel's batch and i.
SHAPES = {"lstm_cell": ("g", "g", 0, 1, 1, 1),
          "lstm_cell_grad": (1, 1, 1, 1, "g", 1, 1, "g", 0),
          "gru_cell": ("g", "g", 0, 1, "g", 1, 1),
          "gru_cell_grad": (1, 1, "g", 1, 1, "g", "g", 0),
          "lstm_options_cell": ("g", "g", 0, 1, 1, "3i", 0, 0, "i", "i", 1, "g", "b", 1, "b", 1, 1, 1, 1),
          "lstm_options_cell_grad": (1, 1, 1, 1, "g", 1, 1, 1, 1, "g", "b", 1, "b", "3i", 0, "i", "i", 1,
                                     "g", "g", 1, 0, "3i", 0, "i", "i"),
          "gru_options_cell": ("g", "g", 0, 1, 0, 0, 1, "g", "b", "g", 1, 1, 1),
          "gru_options_cell_grad": (1, 1, "g", 1, 1, 1, "g", "b", 0, 1, "g", "g", 1, 0, 0, 0),
          "layer_norm_rows": (1, "i", "i", 1, "b", 1),
          "layer_norm_rows_grad": (1, 1, "b", "i", 1, "i", "i"),
          "clock_openness": ("b", "i", "i", "i", "1", 1),
          "clock_openness_grad": ("b", "i", "i", "i", "1", 1, "i", "i", "i"),
          "batch_norm_frame": (1, "i", "i", 1, "i", "i", 1, "sg"),
          "batch_norm_frame_grad": (1, 1, "i", "i", 1, "sg", "i", "i"),
          "lstm_bn_cell": ("g", "g", 0, 1, 1, "3i", 0, "i", "i", 1, "1g", "1g", "g", "1i", "1i", 1, 1, 1, 1, 1,
                           "sg"),
          "lstm_bn_cell_grad": (1, 1, 1, 1, "g", 1, 1, 1, 1, "g", "1g", 1, "1i", "3i", 0, "i", "i", 1, "g", "g",
                                1, "sg", 0, "3i", 0, 0, "i", "i"),
          "gru_bn_cell": ("g", "g", 0, 1, 0, 1, "1g", "1g", "g", "g", 1, 1, 1, "sg"),
          "gru_bn_cell_grad": (1, 1, "g", 1, 1, 1, "g", "1g", 0, 1, "g", "g", 1, "sg", 0, 0, 0)}


def array_shapes(name: str, batch: int, i: int) -> list:
    """The shapes of kernel ``name``'s arrays, in order, for ``batch`` rows of width ``i``
    (the ``batch`` and ``i`` it is called with), and whether each is float64: a list of
    ``(shape, float64)``."""
    g = GATES[name] * i
    sizes = {1: (batch, i), "g": (batch, g), 0: (g,), "i": (i,), "3i": (3 * i,), "b": (batch,), "1": (1,),
             "1g": (1, g), "1i": (1, i), "sg": (SCRATCH_ROWS, g)}
    return [(sizes[code], wide) for code, wide in zip(SHAPES[name], _ARRAYS[name], strict=True)]


@functools.cache
def kernel(name: str, dtype, flags: int = 0) -> ctypes._CFuncPtr:
    """The ``ctypes`` function of kernel ``name`` for arrays of ``dtype`` (float32 or
    float64), for the ``*_options_*`` and ``*_bn_cell*`` kernels compiled for the option
    bits ``flags`` (0 for the others): loaded from the cache, or compiled, cached and
    loaded. Compiles (seconds, the first time in a process) and writes the cache file as
    side effects."""
    dtype, flags = np.dtype(dtype), _checked_flags(name, flags)
    scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    prototype = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(_ARRAYS[name]), ctypes.c_ssize_t,
                                 ctypes.c_ssize_t, scalar)
    symbol = _symbol(name, dtype, flags)
    path = _path(symbol, name, dtype, cache_dir())
    code = _read(path)
    if code is None:
        with _locked(path):
            code = _read(path)                    # stored meanwhile by a helper or a run beside this one
            if code is None:
                compiled = _compile(name, dtype, flags)
                try:
                    code = _emit_object(compiled, symbol)
                except Exception as error:        # llvmlite cannot emit: run Numba's own code
                    _warn_uncached(symbol, error)
                    return prototype(compiled.address)
                _write(path, code)
    try:
        return prototype(_load(code, symbol))
    except Exception as error:                    # llvmlite cannot load: run Numba's own code
        _warn_uncached(symbol, error)
        return prototype(_compile(name, dtype, flags).address)


def _checked_flags(name: str, flags: int) -> int:
    """``flags`` as an int, refused for a kernel that takes no option bits."""
    flags = int(flags)
    if flags and name not in _FLAGGED:
        raise ValueError(f"the cell kernel {name} takes no option bits (got {flags})")
    return flags


def _warn_uncached(symbol: str, error: Exception) -> None:
    warnings.warn(f"sophia: the cell kernel {symbol} runs as Numba compiled it in this process "
                  f"(its machine code could not be cached or loaded: {error!r}); every process "
                  f"will start Numba's compiler", RuntimeWarning, stacklevel=3)


def cache_dir() -> str:
    """Where the kernels' machine code is kept: ``<compiledir>/sophia_kernels``."""
    import pytensor

    return os.path.join(pytensor.config.compiledir, "sophia_kernels")


# -- compiling ahead, in a helper process ------------------------------------------------
_HELPERS = []         # the helper processes started here, kept so that they are reaped
_PREFETCHED = set()   # (name, flags, dtype name) of the kernels handed to a helper


def prefetch(names, dtype) -> None:
    """Start compiling, in a helper process, the kernels ``names`` (``(name, flags)``
    pairs, in the order a function's first call needs them) for ``dtype`` that are not
    cached yet.

    The helper stores them last first, as :func:`kernel` would; this process compiles
    them first first, as its calls reach them; a lock file per kernel keeps the two (and
    runs started side by side) from compiling one twice. On a machine with two or more
    cores a function's first call then waits for about half of its kernels' compile time
    (``bench/train_speed.py --option_sets`` measures the cold compile). Nothing starts
    for fewer than two missing kernels, on one core, or without POSIX file locks; a
    helper that fails leaves its kernels to this process. Side effect: one short-lived
    process (``python -c``) per call that finds kernels to hand over, stopped at this
    process's exit if it is still running.
    """
    dtype = np.dtype(dtype)
    directory = cache_dir()
    missing = [(name, flags) for name, flags in dict.fromkeys(names) if (name, flags, dtype.name) not in _PREFETCHED
               and not os.path.exists(_path(_symbol(name, dtype, flags), name, dtype, directory))]
    if len(missing) < 2 or fcntl is None or _cores() < 2:
        return
    _PREFETCHED.update((name, flags, dtype.name) for name, flags in missing)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    _HELPERS[:] = [helper for helper in _HELPERS if helper.poll() is None]
    try:
        _HELPERS.append(subprocess.Popen(
            [sys.executable, "-c", _HELPER, directory, dtype.name, *(f"{name}:{flags}" for name, flags in missing)],
            env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    except OSError:                               # no helper: this process compiles them all
        pass


@atexit.register
def _stop_helpers() -> None:
    """At exit, stop the helpers still compiling: their cache files are written whole
    or not at all, and the next process compiles what is missing."""
    for helper in _HELPERS:
        if helper.poll() is None:
            helper.terminate()
            helper.wait()


_HELPER = "import sys; from sophia.graph.engines import native; native.compile_into(*sys.argv[1:])"


def compile_into(directory: str, dtype: str, *kernels_: str) -> None:
    """The helper's work (:func:`prefetch`): store in ``directory`` each of ``kernels_``
    (``name:flags``) for ``dtype`` that is neither cached nor being compiled by another
    process, last first."""
    dtype = np.dtype(dtype)
    for name, flags in (k.rsplit(":", 1) for k in reversed(kernels_)):
        flags = int(flags)
        symbol = _symbol(name, dtype, flags)
        path = _path(symbol, name, dtype, directory)
        with _locked(path, wait=False) as held:
            if held and _read(path) is None:
                _write(path, _emit_object(_compile(name, dtype, flags), symbol))


class CallsKernel:
    """Mixin of the Ops that call the kernel ``kernel_name`` (with the option bits
    ``kernel_flags``): preparing one of them for a compiled function prefetches
    (:func:`prefetch`) the kernels of every such Op in that function, the forward ones
    before the gradients."""

    kernel_name = ""
    kernel_flags = 0

    def prepare_node(self, node, storage_map, compute_map, impl):
        super().prepare_node(node, storage_map, compute_map, impl)
        if storage_map and kernels.AVAILABLE:
            names = {(var.owner.op.kernel_name, var.owner.op.kernel_flags) for var in storage_map
                     if var.owner is not None and isinstance(var.owner.op, CallsKernel)}
            prefetch(sorted(names, key=lambda k: (k[0].endswith("_grad"), k)), node.outputs[0].dtype)


@contextlib.contextmanager
def _locked(path: str, wait: bool = True):
    """Hold the lock file ``path + ".lock"`` of a kernel's cache file for the ``with``
    block (``wait``: until it is free; else not at all if another process holds it).
    Yields whether this process may compile: True where no lock can be taken (no
    ``fcntl``, a folder that cannot be written), as compiling twice costs only time.
    The lock goes with the file descriptor, so a process that dies releases it."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    held = True
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        held = False
    except OSError:                               # a file system without flock
        pass
    try:
        yield held
    finally:
        os.close(fd)                              # releases the lock


def _cores() -> int:
    """The cores this process may run on."""
    return blocks.available()


# -- compiling (cold cache) -------------------------------------------------------------
@functools.cache
def _compile(name: str, dtype: np.dtype, flags: int = 0):
    """``kernels.<name>`` (for the option bits ``flags``) wrapped as a ``numba.cfunc``
    over raw pointers."""
    from numba import carray, cfunc, types

    scalar = types.float32 if dtype == np.float32 else types.float64
    pointers = [types.CPointer(types.float64 if accumulator else scalar) for accumulator in _ARRAYS[name]]
    signature = types.void(*pointers, types.intp, types.intp, scalar)
    wrapper = _WRAPPERS[name](carray, _function(name, flags), flags)
    return cfunc(signature, fastmath=True, error_model="numpy", nogil=True)(wrapper)


def _function(name: str, flags: int):
    """The Numba function of kernel ``name``: for the option kernels, the one compiled for ``flags``."""
    specialised = {"lstm_options_cell": kernels.lstm_options_kernels, "gru_options_cell": kernels.gru_options_kernels,
                   "lstm_bn_cell": kernels_bn.lstm_bn_kernels, "gru_bn_cell": kernels_bn.gru_bn_kernels}
    base = name.removesuffix("_grad")
    if base in specialised:
        return specialised[base](flags)[name.endswith("_grad")]
    return getattr(kernels, name, None) or getattr(kernels_bn, name)


def _wrap_lstm_cell(carray, cell, flags):

    def lstm_cell(a, xa, bias, c_prev, c, h, batch, i, one):
        g = 4 * i
        cell(carray(a, (batch, g)), carray(xa, (batch, g)), carray(bias, (g,)), carray(c_prev, (batch, i)),
             carray(c, (batch, i)), carray(h, (batch, i)), one)
    return lstm_cell


def _wrap_lstm_cell_grad(carray, cell_grad, flags):

    def lstm_cell_grad(dh, dc, dh_out, dc_out, a, c, c_in, d, db, batch, i, one):
        g = 4 * i
        cell_grad(carray(dh, (batch, i)), carray(dc, (batch, i)), carray(dh_out, (batch, i)),
                  carray(dc_out, (batch, i)), carray(a, (batch, g)), carray(c, (batch, i)),
                  carray(c_in, (batch, i)), carray(d, (batch, g)), carray(db, (g,)), one)
    return lstm_cell_grad


def _wrap_gru_cell(carray, cell, flags):

    def gru_cell(ha, xa, bias, h_prev, a, hn, h, batch, i, one):
        g = 3 * i
        cell(carray(ha, (batch, g)), carray(xa, (batch, g)), carray(bias, (g,)), carray(h_prev, (batch, i)),
             carray(a, (batch, g)), carray(hn, (batch, i)), carray(h, (batch, i)), one)
    return gru_cell


def _wrap_gru_cell_grad(carray, cell_grad, flags):

    def gru_cell_grad(dh, dh_out, a, h_in, hn, d, d_ha, db, batch, i, one):
        g = 3 * i
        cell_grad(carray(dh, (batch, i)), carray(dh_out, (batch, i)), carray(a, (batch, g)),
                  carray(h_in, (batch, i)), carray(hn, (batch, i)), carray(d, (batch, g)),
                  carray(d_ha, (batch, g)), carray(db, (g,)), one)
    return gru_cell_grad


def _wrap_lstm_options_cell(carray, cell, flags):

    def lstm_options_cell(a, xa, bias, h_prev, c_prev, peep, gamma_h, beta_h, gamma_c, beta_c, k,
                          n_h, rstd_h, n_c, rstd_c, c_new, h_new, c, h, batch, i, one):
        g, bi = 4 * i, (batch, i)
        cell(carray(a, (batch, g)), carray(xa, (batch, g)), carray(bias, (g,)), carray(h_prev, bi),
             carray(c_prev, bi), carray(peep, (3 * i,)), carray(gamma_h, (g,)), carray(beta_h, (g,)),
             carray(gamma_c, (i,)), carray(beta_c, (i,)), carray(k, bi), carray(n_h, (batch, g)),
             carray(rstd_h, (batch,)), carray(n_c, bi), carray(rstd_c, (batch,)), carray(c_new, bi),
             carray(h_new, bi), carray(c, bi), carray(h, bi), one)
    return lstm_options_cell


def _wrap_lstm_options_cell_grad(carray, cell_grad, flags):

    def lstm_options_cell_grad(dh, dc, dh_out, dc_out, a, c_new, h_new, h_in, c_in, n_h, rstd_h,
                               n_c, rstd_c, peep, gamma_h, gamma_c, beta_c, k, d, d_ha, dk,
                               db, d_peep, d_gamma_h, d_gamma_c, d_beta_c, batch, i, one):
        g, bi = 4 * i, (batch, i)
        cell_grad(carray(dh, bi), carray(dc, bi), carray(dh_out, bi), carray(dc_out, bi),
                  carray(a, (batch, g)), carray(c_new, bi), carray(h_new, bi), carray(h_in, bi),
                  carray(c_in, bi), carray(n_h, (batch, g)), carray(rstd_h, (batch,)), carray(n_c, bi),
                  carray(rstd_c, (batch,)), carray(peep, (3 * i,)), carray(gamma_h, (g,)),
                  carray(gamma_c, (i,)), carray(beta_c, (i,)), carray(k, bi), carray(d, (batch, g)),
                  carray(d_ha, (batch, g)), carray(dk, bi), carray(db, (g,)), carray(d_peep, (3 * i,)),
                  carray(d_gamma_h, (g,)), carray(d_gamma_c, (i,)), carray(d_beta_c, (i,)), one)
    return lstm_options_cell_grad


def _wrap_gru_options_cell(carray, cell, flags):

    def gru_options_cell(ha, xa, bias, h_prev, gamma_h, beta_h, k, n_h, rstd_h, a, hn, h_new, h,
                         batch, i, one):
        g, bi = 3 * i, (batch, i)
        cell(carray(ha, (batch, g)), carray(xa, (batch, g)), carray(bias, (g,)), carray(h_prev, bi),
             carray(gamma_h, (g,)), carray(beta_h, (g,)), carray(k, bi), carray(n_h, (batch, g)),
             carray(rstd_h, (batch,)), carray(a, (batch, g)), carray(hn, bi), carray(h_new, bi),
             carray(h, bi), one)
    return gru_options_cell


def _wrap_gru_options_cell_grad(carray, cell_grad, flags):

    def gru_options_cell_grad(dh, dh_out, a, h_in, hn, h_new, n_h, rstd_h, gamma_h, k, d, d_ha, dk,
                              db, d_gamma_h, d_beta_h, batch, i, one):
        g, bi = 3 * i, (batch, i)
        cell_grad(carray(dh, bi), carray(dh_out, bi), carray(a, (batch, g)), carray(h_in, bi),
                  carray(hn, bi), carray(h_new, bi), carray(n_h, (batch, g)), carray(rstd_h, (batch,)),
                  carray(gamma_h, (g,)), carray(k, bi), carray(d, (batch, g)), carray(d_ha, (batch, g)),
                  carray(dk, bi), carray(db, (g,)), carray(d_gamma_h, (g,)), carray(d_beta_h, (g,)),
                  one)
    return gru_options_cell_grad


def _wrap_layer_norm_rows(carray, rows, flags):

    def layer_norm_rows(x, gamma, beta, n, rstd, y, batch, i, one):
        shape = (batch, i)
        rows(carray(x, shape), carray(gamma, (i,)), carray(beta, (i,)), carray(n, shape),
             carray(rstd, (batch,)), carray(y, shape), one)
    return layer_norm_rows


def _wrap_layer_norm_rows_grad(carray, rows_grad, flags):

    def layer_norm_rows_grad(dy, n, rstd, gamma, dx, d_gamma, d_beta, batch, i, one):
        shape = (batch, i)
        rows_grad(carray(dy, shape), carray(n, shape), carray(rstd, (batch,)), carray(gamma, (i,)),
                  carray(dx, shape), carray(d_gamma, (i,)), carray(d_beta, (i,)), one)
    return layer_norm_rows_grad


def _wrap_clock_openness(carray, openness, flags):

    def clock_openness(time, tau_raw, shift, r_raw, leak, k, batch, i, one):
        openness(carray(time, (batch,)), carray(tau_raw, (i,)), carray(shift, (i,)), carray(r_raw, (i,)),
                 carray(leak, (1,)), carray(k, (batch, i)), one)
    return clock_openness


def _wrap_clock_openness_grad(carray, openness_grad, flags):

    def clock_openness_grad(time, tau_raw, shift, r_raw, leak, dk, d_tau, d_shift, d_r, batch, i, one):
        openness_grad(carray(time, (batch,)), carray(tau_raw, (i,)), carray(shift, (i,)), carray(r_raw, (i,)),
                      carray(leak, (1,)), carray(dk, (batch, i)), carray(d_tau, (i,)), carray(d_shift, (i,)),
                      carray(d_r, (i,)), one)
    return clock_openness_grad


def _wrap_batch_norm_frame(carray, frame, flags):

    def batch_norm_frame(x, gamma, beta, n, mean, var, y, scratch, batch, i, one):
        shape = (batch, i)
        frame(carray(x, shape), carray(gamma, (i,)), carray(beta, (i,)), carray(n, shape), carray(mean, (i,)),
              carray(var, (i,)), carray(y, shape), carray(scratch, (SCRATCH_ROWS, i)), one)
    return batch_norm_frame


def _wrap_batch_norm_frame_grad(carray, frame_grad, flags):

    def batch_norm_frame_grad(dy, n, var, gamma, dx, scratch, d_gamma, d_beta, batch, i, one):
        shape = (batch, i)
        frame_grad(carray(dy, shape), carray(n, shape), carray(var, (i,)), carray(gamma, (i,)), carray(dx, shape),
                   carray(scratch, (SCRATCH_ROWS, i)), carray(d_gamma, (i,)), carray(d_beta, (i,)), one)
    return batch_norm_frame_grad


def _wrap_lstm_bn_cell(carray, cell, flags):

    def lstm_bn_cell(a, xa, bias, h_prev, c_prev, peep, gamma_h, gamma_c, beta_c, k, mean_h, var_h, n_h,
                     mean_c, var_c, n_c, c_new, h_new, c, h, scratch, batch, i, one):
        g, bi, rows = 4 * i, (batch, i), batch if flags & kernels_bn.POPULATION else 1
        cell(carray(a, (batch, g)), carray(xa, (batch, g)), carray(bias, (g,)), carray(h_prev, bi),
             carray(c_prev, bi), carray(peep, (3 * i,)), carray(gamma_h, (g,)), carray(gamma_c, (i,)),
             carray(beta_c, (i,)), carray(k, bi), carray(mean_h, (rows, g)), carray(var_h, (rows, g)),
             carray(n_h, (batch, g)), carray(mean_c, (rows, i)), carray(var_c, (rows, i)), carray(n_c, bi),
             carray(c_new, bi), carray(h_new, bi), carray(c, bi), carray(h, bi), carray(scratch, (SCRATCH_ROWS, g)),
             one)
    return lstm_bn_cell


def _wrap_lstm_bn_cell_grad(carray, cell_grad, flags):

    def lstm_bn_cell_grad(dh, dc, dh_out, dc_out, a, c_new, h_new, h_in, c_in, n_h, var_h, n_c, var_c,
                          peep, gamma_h, gamma_c, beta_c, k, d, d_ha, dk, scratch, db, d_peep,
                          d_gamma_h, d_beta_h, d_gamma_c, d_beta_c, batch, i, one):
        g, bi = 4 * i, (batch, i)
        cell_grad(carray(dh, bi), carray(dc, bi), carray(dh_out, bi), carray(dc_out, bi),
                  carray(a, (batch, g)), carray(c_new, bi), carray(h_new, bi), carray(h_in, bi),
                  carray(c_in, bi), carray(n_h, (batch, g)), carray(var_h, (1, g)), carray(n_c, bi),
                  carray(var_c, (1, i)), carray(peep, (3 * i,)), carray(gamma_h, (g,)), carray(gamma_c, (i,)),
                  carray(beta_c, (i,)), carray(k, bi), carray(d, (batch, g)), carray(d_ha, (batch, g)),
                  carray(dk, bi), carray(scratch, (SCRATCH_ROWS, g)), carray(db, (g,)), carray(d_peep, (3 * i,)),
                  carray(d_gamma_h, (g,)), carray(d_beta_h, (g,)), carray(d_gamma_c, (i,)),
                  carray(d_beta_c, (i,)), one)
    return lstm_bn_cell_grad


def _wrap_gru_bn_cell(carray, cell, flags):

    def gru_bn_cell(ha, xa, bias, h_prev, gamma_h, k, mean_h, var_h, n_h, a, hn, h_new, h, scratch,
                    batch, i, one):
        g, bi, rows = 3 * i, (batch, i), batch if flags & kernels_bn.POPULATION else 1
        cell(carray(ha, (batch, g)), carray(xa, (batch, g)), carray(bias, (g,)), carray(h_prev, bi),
             carray(gamma_h, (g,)), carray(k, bi), carray(mean_h, (rows, g)), carray(var_h, (rows, g)),
             carray(n_h, (batch, g)), carray(a, (batch, g)), carray(hn, bi), carray(h_new, bi), carray(h, bi),
             carray(scratch, (SCRATCH_ROWS, g)), one)
    return gru_bn_cell


def _wrap_gru_bn_cell_grad(carray, cell_grad, flags):

    def gru_bn_cell_grad(dh, dh_out, a, h_in, hn, h_new, n_h, var_h, gamma_h, k, d, d_ha, dk, scratch, db,
                         d_gamma_h, d_beta_h, batch, i, one):
        g, bi = 3 * i, (batch, i)
        cell_grad(carray(dh, bi), carray(dh_out, bi), carray(a, (batch, g)), carray(h_in, bi), carray(hn, bi),
                  carray(h_new, bi), carray(n_h, (batch, g)), carray(var_h, (1, g)), carray(gamma_h, (g,)),
                  carray(k, bi), carray(d, (batch, g)), carray(d_ha, (batch, g)), carray(dk, bi),
                  carray(scratch, (SCRATCH_ROWS, g)), carray(db, (g,)), carray(d_gamma_h, (g,)), carray(d_beta_h, (g,)),
                  one)
    return gru_bn_cell_grad


_WRAPPERS = {"lstm_cell": _wrap_lstm_cell, "lstm_cell_grad": _wrap_lstm_cell_grad,
             "gru_cell": _wrap_gru_cell, "gru_cell_grad": _wrap_gru_cell_grad,
             "lstm_options_cell": _wrap_lstm_options_cell,
             "lstm_options_cell_grad": _wrap_lstm_options_cell_grad,
             "gru_options_cell": _wrap_gru_options_cell,
             "gru_options_cell_grad": _wrap_gru_options_cell_grad,
             "layer_norm_rows": _wrap_layer_norm_rows,
             "layer_norm_rows_grad": _wrap_layer_norm_rows_grad,
             "clock_openness": _wrap_clock_openness,
             "clock_openness_grad": _wrap_clock_openness_grad,
             "batch_norm_frame": _wrap_batch_norm_frame,
             "batch_norm_frame_grad": _wrap_batch_norm_frame_grad,
             "lstm_bn_cell": _wrap_lstm_bn_cell, "lstm_bn_cell_grad": _wrap_lstm_bn_cell_grad,
             "gru_bn_cell": _wrap_gru_bn_cell, "gru_bn_cell_grad": _wrap_gru_bn_cell_grad}


def _emit_object(compiled, symbol: str) -> bytes:
    """The machine code of a compiled cfunc, its entry point renamed ``symbol``."""
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(compiled.inspect_llvm())
    module.get_function(compiled.native_name).name = symbol
    return _target_machine().emit_object(module)


# -- loading (warm cache) -------------------------------------------------------------
_ENGINES = []     # the JIT linkers own the loaded code: keep them for the process's life


def _load(code: bytes, symbol: str) -> int:
    """Link ``code`` into this process; the address of its function ``symbol``."""
    import llvmlite.binding as llvm

    _resolve_numba_helpers()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine())
    engine.add_object_file(llvm.ObjectFileRef.from_data(code))
    engine.finalize_object()
    address = engine.get_function_address(symbol)
    if not address:
        raise LookupError(f"{symbol} is not in its object code")
    _ENGINES.append(engine)
    return address


@functools.cache
def _resolve_numba_helpers() -> None:
    """Tell the JIT linker where Numba's C helpers are: a cfunc's error path refers to
    them (never taken by these kernels, but every symbol must resolve)."""
    import llvmlite.binding as llvm
    from numba import _helperlib
    from numba.core.runtime import _nrt_python

    for name, address in _helperlib.c_helpers.items():
        llvm.add_symbol(f"numba_{name}", address)
    for name, address in _nrt_python.c_helpers.items():
        llvm.add_symbol(f"NRT_{name}", address)


@functools.cache
def _target_machine():
    """This CPU, as Numba compiles for it (all its features, -O3)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3,
        reloc="default", codemodel="jitdefault")


# -- the cache files ------------------------------------------------------------------
def _symbol(name: str, dtype: np.dtype, flags: int = 0) -> str:
    """The entry point of kernel ``name`` for ``dtype`` and the option bits ``flags``."""
    return f"sophia_{name}_{dtype.name}" + (f"_options{flags}" if name in _FLAGGED else "")


def _path(symbol: str, name: str, dtype: np.dtype, directory: str) -> str:
    """The cache file of the kernel ``symbol`` (of ``name`` for ``dtype``) in ``directory``."""
    return os.path.join(directory, f"{symbol}-{_fingerprint(name, dtype)}.o")


@functools.cache
def _fingerprint(name: str, dtype: np.dtype) -> str:
    """A hash of everything the machine code of ``name`` for ``dtype`` depends on."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba

    parts = [name, dtype.name, numba.__version__, llvmlite.__version__, llvm.get_process_triple(),
             llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(),
             inspect.getsource(kernels), inspect.getsource(kernels_bn), inspect.getsource(sys.modules[__name__])]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _read(path: str) -> bytes | None:
    """The object code stored at ``path``; None if it is missing or damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    digest, code = data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if not data.startswith(MAGIC) or hashlib.sha256(code).digest() != digest:
        return None
    return code


def _write(path: str, code: bytes) -> None:
    """Store ``code`` at ``path`` (magic, SHA-256, code) through a temporary file and a
    rename. A cache that cannot be written is skipped: the kernel still runs."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(code).digest() + code)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
