"""oneDNN's LSTM primitive through its C API, for the training graph's recurrences.

PyTorch's ``nn.LSTM`` runs on the CPU in oneDNN's RNN primitive: one call does a
whole window of one layer — the input product for all frames, every frame's
recurrent product with the weights packed once, the cell — and one call its
backward. On the reference model that takes less time than Sophia's own fused
Ops (``sophia/graph/engines/fused.py``) with their BLAS calls (``bench/train_speed.py`` and
``bench/lstm_engines.py`` measure both; see ``bench/README.md``). This module binds
the few C functions it takes, with ``ctypes``, to
the ``libdnnl.so.3`` that the ``onednn-cpu-gomp`` wheel installs (Intel's build of
oneDNN 3.2, Apache 2.0; a dependency of Sophia on x86-64 Linux).

:func:`lstm` ``(steps, batch, input_dim, width)`` returns an :class:`LSTM`: the
forward-training and backward primitives of one layer and window length, made once
and cached. Its arrays are numpy float32, C-contiguous, in oneDNN's layouts:

- ``x_tbj`` [T][B][j], ``h_tbi`` [T][B][i]; states ``h_bi``, ``c_bi`` [B][i];
- weights ``W_x`` [j][4][i] and ``W_h`` [i][4][i], bias [4][i], gates in oneDNN's
  order (input, forget, candidate, output);
- ``ws`` the forward's workspace, ``LSTM.ws_bytes`` uint8, read by the backward.

:func:`available` says whether the library loads; where it does not (another
platform, no ``libgomp``), Sophia uses its own fused Ops and says why in
:data:`UNAVAILABLE_REASON`. Nothing checks the arrays' addresses or shapes beyond
what :class:`LSTM` documents: only ``sophia/graph/engines/onednn_lstm.py`` calls it.

Example
-------
>>> import numpy as np
>>> if available():
...     p = lstm(3, 2, 5, 4)
...     x, W_x, W_h = np.ones((3, 2, 5), np.float32), np.zeros((5, 4, 4), np.float32), np.zeros((4, 4, 4), np.float32)
...     b, h, c = np.zeros((4, 4), np.float32), np.zeros((2, 4), np.float32), np.ones((2, 4), np.float32)
...     h_tbi, h_end, c_end = np.empty((3, 2, 4), np.float32), np.empty((2, 4), np.float32), np.empty((2, 4), np.float32)
...     p.forward(x, W_x, W_h, b, h, c, h_tbi, h_end, c_end, np.empty(p.ws_bytes, np.uint8))
...     print(round(float(c_end[0, 0]), 4))     # c = σ(0)·c + σ(0)·tanh(0), three times: 1/8
... else:
...     print(0.125)
0.125
"""
from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os

import numpy as np

DISTRIBUTION = "onednn-cpu-gomp"
SONAME = "libdnnl.so.3"

# Constants of oneDNN 3.x's C API (oneapi/dnnl/dnnl_types.h, dnnl_common_types.h);
# stable within the major version, which :func:`_load` checks.
_F32, _ANY, _TNC, _LDNC, _LDIGO, _LDGO = 3, 1, 4, 5, 6, 5
_FORWARD_TRAINING, _BACKWARD, _LEFT2RIGHT, _CPU = 64, 128, 1, 1
_QUERY_WORKSPACE_MD, _QUERY_EXEC_ARG_MD, _STREAM_DEFAULT = 135, 255, 1
ARG = dict(src_layer=1, src_iter=2, src_iter_c=3, weights_layer=33, weights_iter=34, bias=41,
           dst_layer=17, dst_iter=18, dst_iter_c=19, workspace=64,
           diff_src_layer=129, diff_src_iter=130, diff_src_iter_c=131, diff_weights_layer=161,
           diff_weights_iter=162, diff_bias=169, diff_dst_layer=145, diff_dst_iter=146, diff_dst_iter_c=147)
_FROM, _TO = 1, 17

UNAVAILABLE_REASON = ""


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


_P, _I, _U, _PP = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)
_DIMS = ctypes.c_int64 * 12
_SIGNATURES = {       # name: (return type, argument types...), as in oneapi/dnnl/dnnl.h
    "dnnl_engine_create": (_I, _PP, _I, ctypes.c_size_t),
    "dnnl_stream_create": (_I, _PP, _P, _U),
    "dnnl_stream_wait": (_I, _P),
    "dnnl_memory_desc_create_with_tag": (_I, _PP, _I, _DIMS, _I, _I),
    "dnnl_memory_desc_destroy": (_I, _P),
    "dnnl_memory_desc_get_size": (ctypes.c_size_t, _P),
    "dnnl_memory_create": (_I, _PP, _P, _P, _P),
    "dnnl_memory_set_data_handle": (_I, _P, _P),
    "dnnl_primitive_desc_query_md": (_P, _P, _I, _I),
    "dnnl_primitive_create": (_I, _PP, _P),
    "dnnl_primitive_execute": (_I, _P, _P, _I, _P),
    "dnnl_reorder_primitive_desc_create": (_I, _PP, _P, _P, _P, _P, _P),
    "dnnl_lstm_forward_primitive_desc_create": (_I, _PP, _P, _I, _I) + (_P,) * 11 + (_U, _P),
    "dnnl_lstm_backward_primitive_desc_create": (_I, _PP, _P, _I, _I) + (_P,) * 22 + (_U, _P, _P),
}


class OneDNNError(RuntimeError):
    """A oneDNN call returned an error status."""


def _library_paths():
    """Where ``libdnnl.so.3`` may be: the wheel's files first, then the loader's path."""
    try:
        for f in importlib.metadata.distribution(DISTRIBUTION).files or ():
            if f.name == SONAME:
                yield str(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    yield SONAME


@functools.lru_cache(maxsize=1)
def _load():
    """The library, its engine and stream; None where it cannot be loaded (the reason
    goes to :data:`UNAVAILABLE_REASON`)."""
    global UNAVAILABLE_REASON
    if os.environ.get("SOPHIA_ONEDNN", "1") == "0":
        UNAVAILABLE_REASON = "SOPHIA_ONEDNN=0"
        return None
    errors = []
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        UNAVAILABLE_REASON = f"{SONAME} not loadable ({'; '.join(errors)})"
        return None
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    version = lib.dnnl_version().contents
    if version.major != 3:
        UNAVAILABLE_REASON = f"oneDNN {version.major}.{version.minor}: Sophia binds the 3.x C API"
        return None
    for name, (restype, *argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    engine, stream = ctypes.c_void_p(), ctypes.c_void_p()
    _check(lib.dnnl_engine_create(ctypes.byref(engine), _CPU, 0), "dnnl_engine_create")
    _check(lib.dnnl_stream_create(ctypes.byref(stream), engine, _STREAM_DEFAULT), "dnnl_stream_create")
    return lib, engine, stream


def available() -> bool:
    """Whether oneDNN's library loads here (x86-64 Linux with the wheel installed)."""
    return _load() is not None


def _check(status, what):
    if status != 0:
        raise OneDNNError(f"oneDNN: {what} returned status {status}")


def _dims(values):
    return _DIMS(*values)


def _desc(dims, tag):
    lib = _load()[0]
    md = ctypes.c_void_p()
    _check(lib.dnnl_memory_desc_create_with_tag(ctypes.byref(md), len(dims), _dims(dims), _F32, tag),
           "dnnl_memory_desc_create_with_tag")
    return md


class _Primitive:
    """A primitive made from a primitive descriptor, with one memory object per
    argument; each call points those objects at the caller's arrays."""

    def __init__(self, pd, args):
        lib, engine, _ = _load()
        self.pd, self.handle = pd, ctypes.c_void_p()
        _check(lib.dnnl_primitive_create(ctypes.byref(self.handle), pd), "dnnl_primitive_create")
        self._memory = {}
        for a in args:
            m = ctypes.c_void_p()
            _check(lib.dnnl_memory_create(ctypes.byref(m), self.md(a), engine, None),
                   "dnnl_memory_create")
            self._memory[a] = m
        self._args = (_ExecArg * len(args))(*[_ExecArg(ARG.get(a, a), self._memory[a]) for a in args])

    def md(self, arg):
        """The memory descriptor the primitive expects for argument ``arg``."""
        return _load()[0].dnnl_primitive_desc_query_md(self.pd, _QUERY_EXEC_ARG_MD, ARG.get(arg, arg))

    def size(self, arg) -> int:
        """Bytes of argument ``arg`` in the primitive's layout."""
        return _load()[0].dnnl_memory_desc_get_size(self.md(arg))

    def __call__(self, addresses):
        """Run on the arrays at ``addresses`` (argument → address), waiting for the end."""
        lib, _, stream = _load()
        for a, address in addresses.items():
            _check(lib.dnnl_memory_set_data_handle(self._memory[a], ctypes.c_void_p(address)),
                   "dnnl_memory_set_data_handle")
        _check(lib.dnnl_primitive_execute(self.handle, stream, len(self._args), self._args),
               "dnnl_primitive_execute")
        _check(lib.dnnl_stream_wait(stream), "dnnl_stream_wait")


def _reorder(src_md, dst_md):
    """A reorder primitive from ``src_md`` to ``dst_md`` (plain to packed weights)."""
    lib, engine, _ = _load()
    pd = ctypes.c_void_p()
    _check(lib.dnnl_reorder_primitive_desc_create(ctypes.byref(pd), src_md, engine,
                                                  dst_md, engine, None),
           "dnnl_reorder_primitive_desc_create")
    return _Primitive(pd, (_FROM, _TO))


_STATES = ("src_iter", "src_iter_c", "dst_iter", "dst_iter_c")
_WEIGHTS = ("weights_layer", "weights_iter")
_DIFFS = ("diff_src_layer", "diff_src_iter", "diff_src_iter_c", "diff_weights_layer", "diff_weights_iter",
          "diff_bias", "diff_dst_layer", "diff_dst_iter", "diff_dst_iter_c")


class LSTM:
    """One LSTM layer over windows of ``steps`` frames: :meth:`forward` (training,
    with a workspace) and :meth:`backward`. The weights are packed into each
    primitive's layout at every call (they change every training step)."""

    def __init__(self, steps, batch, input_dim, width):
        lib, engine, _ = _load()
        t, b, j, i = steps, batch, input_dim, width
        src, dst = _desc((t, b, j), _TNC), _desc((t, b, i), _TNC)
        state, bias = _desc((1, 1, b, i), _LDNC), _desc((1, 1, 4, i), _LDGO)
        w_any = [_desc((1, 1, n, 4, i), _ANY) for n in (j, i)]
        w_plain = [_desc((1, 1, n, 4, i), _LDIGO) for n in (j, i)]
        fwd_pd, bwd_pd = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.dnnl_lstm_forward_primitive_desc_create(
            ctypes.byref(fwd_pd), engine, _FORWARD_TRAINING, _LEFT2RIGHT, src, state, state, *w_any,
            None, None, bias, dst, state, state, 0, None), "dnnl_lstm_forward_primitive_desc_create")
        _check(lib.dnnl_lstm_backward_primitive_desc_create(
            ctypes.byref(bwd_pd), engine, _BACKWARD, _LEFT2RIGHT, src, state, state, *w_any, None, None,
            bias, dst, state, state, src, state, state, *w_plain, None, None, bias, dst, state, state, 0,
            fwd_pd, None), "dnnl_lstm_backward_primitive_desc_create")
        core = ("src_layer", "bias", "dst_layer", "workspace") + _STATES + _WEIGHTS
        self._fwd = _Primitive(fwd_pd, core)
        self._bwd = _Primitive(bwd_pd, core + _DIFFS)
        self._packers = {p: [(w, _reorder(plain, p.md(w)), np.empty(p.size(w), np.uint8))
                             for w, plain in zip(_WEIGHTS, w_plain)] for p in (self._fwd, self._bwd)}
        self.ws_bytes = lib.dnnl_memory_desc_get_size(lib.dnnl_primitive_desc_query_md(fwd_pd, _QUERY_WORKSPACE_MD, 0))
        for md in (src, dst, state, bias, *w_any, *w_plain):
            lib.dnnl_memory_desc_destroy(md)

    def _run(self, primitive, W_x, W_h, arrays):
        """Pack the weights for ``primitive``, then run it on ``arrays`` (argument → array)."""
        addresses = {a: x.ctypes.data for a, x in arrays.items()}
        for (w, reorder, buffer), array in zip(self._packers[primitive], (W_x, W_h)):
            reorder({_FROM: array.ctypes.data, _TO: buffer.ctypes.data})
            addresses[w] = buffer.ctypes.data
        primitive(addresses)

    @staticmethod
    def _window(x_tbj, W_x, W_h, b, h_bi, c_bi, h_tbi, h_end, c_end, ws):
        """The arrays of a forward call by argument (weights aside: they are packed)."""
        return dict(src_layer=x_tbj, bias=b, dst_layer=h_tbi, workspace=ws, src_iter=h_bi, src_iter_c=c_bi,
                    dst_iter=h_end, dst_iter_c=c_end)

    def forward(self, x_tbj, W_x, W_h, b, h_bi, c_bi, h_tbi, h_end, c_end, ws):
        """Fill ``h_tbi`` (every frame's h), ``h_end``, ``c_end`` (the last frame's
        states) and the workspace ``ws`` from ``x_tbj`` and the entering ``h_bi``, ``c_bi``.
        Arrays are passed by address: slices of larger arrays must be contiguous."""
        self._run(self._fwd, W_x, W_h, self._window(x_tbj, W_x, W_h, b, h_bi, c_bi, h_tbi, h_end, c_end, ws))

    def backward(self, forward, d_h_tbi, d_h_end, d_c_end, d_x_tbj, d_h_bi, d_c_bi, d_W_x, d_W_h, d_b):
        """Backpropagate through the window that :meth:`forward` ran with the arguments
        ``forward`` (the same tuple, in its order). Given the gradients of every
        frame's h and of the end states, fill those of the input and of the entering
        states, and *add* those of the weights and bias (plain layouts) to ``d_W_x``,
        ``d_W_h``, ``d_b``."""
        diffs = dict(diff_src_layer=d_x_tbj, diff_src_iter=d_h_bi, diff_src_iter_c=d_c_bi,
                     diff_weights_layer=d_W_x, diff_weights_iter=d_W_h, diff_bias=d_b,
                     diff_dst_layer=d_h_tbi, diff_dst_iter=d_h_end, diff_dst_iter_c=d_c_end)
        self._run(self._bwd, forward[1], forward[2], {**self._window(*forward), **diffs})


@functools.cache
def lstm(steps: int, batch: int, input_dim: int, width: int) -> LSTM:
    """The primitives for one layer shape and segment length, made once and kept for the
    process (at most window_size lengths per layer shape; making one takes milliseconds)."""
    if not available():
        raise OneDNNError(f"oneDNN is not available: {UNAVAILABLE_REASON}")
    return LSTM(steps, batch, input_dim, width)
