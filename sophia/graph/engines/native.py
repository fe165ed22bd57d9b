"""The cell kernels as native code: ``cells.c``, compiled by the system's C compiler.

``sophia/graph/engines/cells.c`` holds the per-frame cell kernels of the fused Ops
(``fused*.py``): the LSTM and GRU cells with every unit option, layer norm of rows, the
clock gate's openness, batch norm of a frame, and their gradients. This module compiles
them with the C compiler (``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the
``PATH``; PyTensor's C backend needs one too) at ``-O3 -march=native``, once per machine,
dtype and set of option bits, keeps each library on disk and loads it with ``ctypes``.

:func:`kernel` ``(name, dtype, flags)`` returns a ``ctypes`` function; the
``*_options_*`` and ``*_bn_cell*`` kernels are compiled for the option bits ``flags``
(:data:`PEEPHOLE`, :data:`LAYER_NORM`, :data:`CLOCK`, :data:`POPULATION`), constants of
their code (0 for the others). Its arguments are the addresses of the kernel's arrays,
in the order of its C function, then ``batch``, ``i`` (the layer width; for
``layer_norm_rows*``, ``clock_openness*`` and ``batch_norm_frame*``, the rows and their
width) and ``one`` (1 in ``dtype``). Every array must be C-contiguous with the shape
:func:`array_shapes` gives; the gradient accumulators (``db``, ``d_gamma`` …) and batch
norm's ``scratch`` are float64, the others are ``dtype``. Nothing checks the addresses:
passing a wrong one corrupts memory, so only the fused Ops call these.

A kernel and its gradient share one library (``lstm_options_cell`` and
``lstm_options_cell_grad``: family ``lstm_options_cell``), which compiles in 0.2–1.4 s
(``bench/train_speed.py --option_sets`` measures the cold compile of each option set).
The libraries live in ``<compiledir>/sophia_kernels`` (PyTensor's compiledir, like the
JAX cache in ``sophia/graph/modes.py``), named by family, dtype, option bits and a hash
of everything the code depends on: the source, the compiler and its version, the flags
and the CPU. Files of older versions stay until the folder is deleted. A library is
compiled to a temporary name and renamed, under a lock file beside it (``.so.lock``),
so runs side by side compile it once; its SHA-256 is stored beside it (``.so.sha256``)
and checked before loading, so a damaged file is compiled again, never loaded. Where the folder cannot be written, the library is compiled
into a temporary folder for this process alone.

Compiling a function whose Ops call kernels (:class:`CallsKernel`) starts compiling the
missing libraries in threads, one per core (:func:`prefetch`), while the function's
first call waits for the ones it reaches. Without a C compiler (``available()`` is
False) the plain LSTM and GRU Ops run their numpy code and the option layers run on scan.

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

import concurrent.futures
import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

try:
    import fcntl
except ImportError:                       # pragma: no cover - not POSIX: no lock files
    fcntl = None

import numpy as np

from sophia.graph.engines import blocks

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cells.c")

# The option bits (``SOPHIA_FLAGS`` in cells.c).
PEEPHOLE, LAYER_NORM, CLOCK = 1, 2, 4
POPULATION = 8            # batch norm: the statistics are the population's, one row per batch row
SCRATCH_ROWS = 3          # float64 rows of batch norm's scratch: two sums over the batch, one per-unit factor

# Everything but the FTZ start-up code -ffast-math links into a library: reassociation
# vectorises the float64 sums; NaN and inf still propagate.
CFLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-math-errno",
          "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros", "-freciprocal-math")

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
# The kernels compiled per set of option bits (``PEEPHOLE | ...``).
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




def family(name: str) -> str:
    """The library that holds kernel ``name``: a kernel and its gradient share one."""
    return name.removesuffix("_grad")


@functools.cache
def available() -> bool:
    """Whether a C compiler is found (``$CC``, ``cc``, ``gcc`` or ``clang``) and ``cells.c``
    is installed, so the kernels can run."""
    return bool(_compiler()) and os.path.exists(SOURCE)


@functools.cache
def kernel(name: str, dtype, flags: int = 0) -> ctypes._CFuncPtr:
    """The ``ctypes`` function of kernel ``name`` for arrays of ``dtype`` (float32 or
    float64), for the ``*_options_*`` and ``*_bn_cell*`` kernels compiled for the option
    bits ``flags`` (0 for the others): loaded from the cache, or compiled, cached and
    loaded. Compiling (a second or so, the first time on a machine) writes the cache
    file as a side effect. Raises ``RuntimeError`` with the compiler's message where
    the library cannot be compiled."""
    dtype, flags = np.dtype(dtype), _checked_flags(name, flags)
    function = getattr(_library(family(name), dtype, flags), f"sophia_{name}")
    scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    function.argtypes = [ctypes.c_void_p] * len(_ARRAYS[name]) + [ctypes.c_ssize_t, ctypes.c_ssize_t, scalar]
    function.restype = None
    return function


def _checked_flags(name: str, flags: int) -> int:
    """``flags`` as an int, refused for a kernel that takes no option bits."""
    flags = int(flags)
    if flags and name not in _FLAGGED:
        raise ValueError(f"the cell kernel {name} takes no option bits (got {flags})")
    return flags


def cache_dir() -> str:
    """Where the compiled kernels are kept: ``<compiledir>/sophia_kernels``."""
    import pytensor

    return os.path.join(pytensor.config.compiledir, "sophia_kernels")


@functools.cache
def _library(family_: str, dtype: np.dtype, flags: int) -> ctypes.CDLL:
    """The loaded library of ``family_`` for ``dtype`` and ``flags``: waited for where a
    prefetch thread compiles it, else loaded from the cache, or compiled and loaded."""
    path = _path(family_, dtype, flags, cache_dir())
    pending = _PENDING.get(path)
    if pending is not None:
        pending.result()
    library = _open(path, family_)
    if library is None:
        with _locked(path) as writable:
            library = _open(path, family_)        # stored meanwhile by a run beside this one
            if library is None and writable:
                library = _compile_and_open(family_, dtype, flags, path)
    if library is None:                           # a cache that cannot be written: this process's own copy
        with tempfile.TemporaryDirectory() as private:
            library = _compile_and_open(family_, dtype, flags, os.path.join(private, os.path.basename(path)))
    return library


def _open(path: str, family_: str) -> ctypes.CDLL | None:
    """The library at ``path`` if its SHA-256 is the one stored beside it (``.sha256``)
    and it holds ``family_``'s kernels; None if it is missing or damaged (loading a
    damaged library could crash the process, so it is never tried)."""
    try:
        with open(path, "rb") as f:
            code = f.read()
        with open(path + ".sha256") as f:
            digest = f.read().strip()
    except OSError:
        return None
    if hashlib.sha256(code).hexdigest() != digest:
        return None
    try:
        library = ctypes.CDLL(path)
        getattr(library, f"sophia_{family_}")
        getattr(library, f"sophia_{family_}_grad")
    except (OSError, AttributeError):
        return None
    return library


def _compile_and_open(family_: str, dtype: np.dtype, flags: int, path: str) -> ctypes.CDLL:
    """:func:`_compile` ``family_`` into ``path`` and load it."""
    _compile(family_, dtype, flags, path)
    library = _open(path, family_)
    if library is None:
        raise RuntimeError(f"sophia: the cell kernels {family_} compiled into {path} cannot be loaded")
    return library


def _compile(family_: str, dtype: np.dtype, flags: int, path: str) -> None:
    """Compile the library of ``family_`` for ``dtype`` and ``flags`` into ``path``, its
    SHA-256 beside it, each through a temporary file and a rename."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".so.tmp")
    os.close(fd)
    try:
        command = [*_compiler(), "-x", "c", *CFLAGS, f"-DSOPHIA_DOUBLE={int(dtype == np.float64)}",
                   f"-DSOPHIA_FLAGS={flags}", f"-DSOPHIA_WANT_{family_}", "-o", tmp, SOURCE, "-lm"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"sophia: the C compiler {shlex.join(_compiler())!r} could not compile the cell kernels "
                               f"{family_} ({dtype.name}, option bits {flags}) from {SOURCE}:\n"
                               f"{done.stderr[-3000:]}")
        with open(tmp, "rb") as f:
            _replace_text(path + ".sha256", hashlib.sha256(f.read()).hexdigest())
        os.replace(tmp, path)                     # after its digest: a reader sees a pair that matches or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _replace_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- compiling ahead, in threads ---------------------------------------------------------
_PENDING = {}         # cache path -> the Future of its compile, started by prefetch
_PENDING_LOCK = threading.Lock()


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=max(1, blocks.available()),
                                                 thread_name_prefix="sophia-kernels")


def prefetch(names, dtype) -> None:
    """Start compiling, in threads (one per core), the libraries of the kernels ``names``
    (``(name, flags)`` pairs, in the order a function's first call needs them) for
    ``dtype`` that are not cached yet. :func:`kernel` waits for a library being compiled
    here; a lock file per library keeps runs started side by side from compiling one
    twice. A compile that fails here is tried again, and reported, by :func:`kernel`.
    Side effect: one compiler process per missing library."""
    dtype, directory = np.dtype(dtype), cache_dir()
    for family_, flags in dict.fromkeys((family(name), int(flags)) for name, flags in names):
        path = _path(family_, dtype, flags, directory)
        with _PENDING_LOCK:
            if path in _PENDING or os.path.exists(path):
                continue
            _PENDING[path] = _pool().submit(_compile_quietly, family_, dtype, flags, path)


def _compile_quietly(family_: str, dtype: np.dtype, flags: int, path: str) -> None:
    """A prefetch thread's work: compile into the cache unless another run holds its lock
    or has stored it. Errors are left for :func:`kernel` to raise."""
    with contextlib.suppress(Exception), _locked(path, wait=False) as held:
        if held and _open(path, family_) is None:
            _compile_and_open(family_, dtype, flags, path)


class CallsKernel:
    """Mixin of the Ops that call the kernel ``kernel_name`` (with the option bits
    ``kernel_flags``): preparing one of them for a compiled function prefetches
    (:func:`prefetch`) the libraries of every such Op in that function, the forward ones
    before the gradients."""

    kernel_name = ""
    kernel_flags = 0

    def prepare_node(self, node, storage_map, compute_map, impl):
        super().prepare_node(node, storage_map, compute_map, impl)
        if storage_map and available():
            names = {(var.owner.op.kernel_name, var.owner.op.kernel_flags) for var in storage_map
                     if var.owner is not None and isinstance(var.owner.op, CallsKernel)}
            prefetch(sorted(names, key=lambda k: (k[0].endswith("_grad"), k)), node.outputs[0].dtype)


@contextlib.contextmanager
def _locked(path: str, wait: bool = True):
    """Hold the lock file ``path + ".lock"`` of a library for the ``with`` block (``wait``:
    until it is free; else not at all if another process or thread holds it). Yields
    whether this process may compile into ``path``: False where another holds the lock
    (``wait=False``) or the folder cannot be written; True where no lock can be taken
    (no ``fcntl``), as compiling twice costs only time. The lock goes with the file
    descriptor, so a process that dies releases it."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
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


# -- the cache files ------------------------------------------------------------------
def _path(family_: str, dtype: np.dtype, flags: int, directory: str) -> str:
    """The cache file of ``family_``'s library for ``dtype`` and ``flags`` in ``directory``."""
    return os.path.join(directory, f"sophia_{family_}_{dtype.name}_options{flags}-{_fingerprint()}.so")


@functools.cache
def _compiler() -> tuple:
    """The C compiler's command: ``$CC`` (split as a shell would, e.g. ``ccache gcc``), else
    the first of ``cc``, ``gcc``, ``clang`` on the ``PATH``; empty where there is none."""
    named = shlex.split(os.environ.get("CC", ""))
    if named:
        return tuple(named)
    found = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), "")
    return (found,) if found else ()


@functools.cache
def _fingerprint() -> str:
    """A hash of everything the compiled code depends on: the source, the compiler and
    its version, the flags and this CPU."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    compiler, version, found = _compiler(), "", ""
    if compiler:
        try:
            version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
        except OSError:
            pass
        found = shutil.which(compiler[0]) or ""
    parts = [source.decode(), *compiler, found, version, " ".join(CFLAGS), platform.machine(), _cpu()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _cpu() -> str:
    """This CPU's model and features, as ``-march=native`` sees them (Linux: /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor()
