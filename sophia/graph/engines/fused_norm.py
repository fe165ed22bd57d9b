"""Layer and batch norm as one Op each, for the graphs around the fused recurrences.

A layer-normalised LSTM or GRU layer normalises its input product ``x W_x``
[T][B][g] outside the recurrence. As graph code (:class:`sophia.graph.norms.LayerNorm`)
that is a dozen elementwise passes over T·B·g values forward and more backward,
which the thin graphs of the fused engine run one by one (``compile_mode = "auto"``
keeps their rewrites to a minimum, :mod:`sophia.graph.modes`). Here it is one kernel
pass each way (``sophia_layer_norm_rows`` in ``cells.c`` and its gradient, native code through
:mod:`~sophia.graph.engines.native`), with the same function:
y = γ (x − mean) / sqrt(var + ε) + β per row, ε = :data:`sophia.graph.norms.EPSILON`.
``tests/test_engines.py`` checks it inside every layer-normalised fused layer,
``tests/test_fused_norm.py`` on its own.

A batch-normalised layer's input product (training graphs) goes through
:func:`batch_norm` likewise: each frame [B][g] normalised over its batch with the
frame's own statistics (``sophia_batch_norm_frame`` and its gradient), the
function of :class:`sophia.graph.norms.BatchNorm` in training; the statistics come
out for the population updates.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> x, gamma, beta = tt.tensor3(), tt.vector(), tt.vector()
>>> f = th.function([x, gamma, beta], layer_norm(x, gamma, beta))
>>> y = f(np.arange(12.0).reshape(1, 3, 4), np.ones(4), np.zeros(4))
>>> bool(np.allclose(y.mean(axis=-1), 0) and np.allclose(y.std(axis=-1), 1, atol=1e-4))
True
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from sophia.graph.engines import blocks, native
from sophia.graph.engines.window import Frames
from sophia.graph.engines.window import contiguous


def layer_norm(s_x, v_gamma_g, v_beta_g):
    """``s_x`` [..][g] layer-normalised over its last axis with gain and bias [g]."""
    return LayerNormRows()(s_x, v_gamma_g, v_beta_g)[0]


class LayerNormRows(native.CallsKernel, Op):
    """``(x, gamma_g, beta_g)`` → ``(y, n, rstd)``: y = γ n + β, the normalised rows n
    (x's shape) and 1 / sd per row (x's shape without its last axis), kept for the
    gradient. Requires the native kernels (a C compiler)."""

    kernel_name = "layer_norm_rows"

    __props__ = ()

    def make_node(self, x, gamma, beta):
        x = tt.as_tensor_variable(x)
        gamma, beta = (tt.cast(tt.as_tensor_variable(v), x.dtype) for v in (gamma, beta))
        if x.ndim < 1 or gamma.ndim != 1 or beta.ndim != 1:
            raise TypeError("LayerNormRows expects x [..][g] and gamma, beta [g]")
        rstd = tt.tensor(dtype=x.dtype, shape=(None,) * (x.ndim - 1))
        return Apply(self, [x, gamma, beta], [x.type(), x.type(), rstd])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0], shapes[0], shapes[0][:-1]]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        x, gamma, beta = contiguous(inputs, dtype)
        width = x.shape[-1]
        rows = x.size // width if width else 0
        y, n, rstd = np.empty_like(x), np.empty_like(x), np.empty(x.shape[:-1], dtype)
        if rows:
            kernel, size = native.kernel(self.kernel_name, dtype), x.itemsize

            def block(k, start, stop):
                at, row_at = start * width * size, start * size
                kernel(x.ctypes.data + at, gamma.ctypes.data, beta.ctypes.data, n.ctypes.data + at,
                       rstd.ctypes.data + row_at, y.ctypes.data + at, stop - start, width, x.dtype.type(1))

            blocks.run(block, blocks.split(rows, width))
        for storage, value in zip(output_storage, (y, n, rstd)):
            storage[0] = value

    def pullback(self, inputs, outputs, output_grads):
        if not all(isinstance(g.type, DisconnectedType) for g in output_grads[1:]):
            raise NotImplementedError("LayerNormRows: its saved arrays have no gradient")
        return LayerNormRowsGrad()(output_grads[0], outputs[1], outputs[2], inputs[1])


class _NormGrad(Op):
    """``(dy, n, statistic, gamma_g)`` → ``(dx, d_gamma_g, d_beta_g)``: the layout of
    both norms' backward Ops."""

    __props__ = ()

    def make_node(self, dy, n, statistic, gamma):
        inputs = [tt.as_tensor_variable(v) for v in (dy, n, statistic, gamma)]
        return Apply(self, inputs, [inputs[0].type(), inputs[3].type(), inputs[3].type()])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0], shapes[3], shapes[3]]


class LayerNormRowsGrad(native.CallsKernel, _NormGrad):
    """``(dy, n, rstd, gamma_g)`` → ``(dx, d_gamma_g, d_beta_g)``: the backward of
    :class:`LayerNormRows` from the gradient of its y."""

    kernel_name = "layer_norm_rows_grad"

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        dy, n, rstd, gamma = contiguous(inputs, dtype)
        width = dy.shape[-1]
        rows = dy.size // width if width else 0
        dx = np.empty_like(dy)
        spans = blocks.split(rows, width)
        d_gamma, d_beta = np.zeros((len(spans), width), np.float64), np.zeros((len(spans), width), np.float64)
        if rows:
            kernel, size = native.kernel(self.kernel_name, dtype), dy.itemsize

            def block(k, start, stop):
                at, row_at = start * width * size, start * size
                kernel(dy.ctypes.data + at, n.ctypes.data + at, rstd.ctypes.data + row_at, gamma.ctypes.data,
                       dx.ctypes.data + at, d_gamma[k].ctypes.data, d_beta[k].ctypes.data, stop - start, width,
                       dy.dtype.type(1))

            blocks.run(block, spans)
        d_gamma, d_beta = d_gamma.sum(axis=0), d_beta.sum(axis=0)
        for storage, value in zip(output_storage, (dx, d_gamma.astype(dtype), d_beta.astype(dtype))):
            storage[0] = value


def batch_norm(s_x_tbg, v_gamma_g, v_beta_g=None):
    """``(s_y_tbg, s_mean_tg, s_var_tg)``: each frame of ``s_x_tbg`` normalised over its
    batch with gain and bias [g] (no bias: None), and the frames' statistics."""
    beta = tt.zeros_like(v_gamma_g) if v_beta_g is None else v_beta_g
    y, _, mean, var = BatchNormFrames()(s_x_tbg, v_gamma_g, beta)
    return y, mean, var


class BatchNormFrames(native.CallsKernel, Op):
    """``(x_tbg, gamma_g, beta_g)`` → ``(y, n, mean_tg, var_tg)``: y = γ n + β per frame
    with n = (x − mean) / sqrt(var + ε), the mean and biased variance over the batch
    axis of each frame; n is kept for the gradient, the statistics have none (they
    feed the population updates). Requires the native kernels (a C compiler)."""

    kernel_name = "batch_norm_frame"

    __props__ = ()

    def make_node(self, x, gamma, beta):
        x = tt.as_tensor_variable(x)
        gamma, beta = (tt.cast(tt.as_tensor_variable(v), x.dtype) for v in (gamma, beta))
        if x.ndim != 3 or gamma.ndim != 1 or beta.ndim != 1:
            raise TypeError("BatchNormFrames expects x [T][B][g] and gamma, beta [g]")
        return Apply(self, [x, gamma, beta], [x.type(), x.type(), tt.matrix(dtype=x.dtype), tt.matrix(dtype=x.dtype)])

    def infer_shape(self, fgraph, node, shapes):
        (t, _, g) = shapes[0]
        return [shapes[0], shapes[0], (t, g), (t, g)]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        x, gamma, beta = contiguous(inputs, dtype)
        steps, batch, width = x.shape
        y, n = np.empty_like(x), np.empty_like(x)
        mean, var = np.empty((steps, width), dtype), np.empty((steps, width), dtype)
        if x.size:
            spans = blocks.split(steps, batch * width)
            scratch = np.empty((len(spans), native.SCRATCH_ROWS, width), np.float64)
            frame = native.kernel(self.kernel_name, dtype)
            addr = [Frames(a) for a in (x, n, mean, var, y)]

            def block(k, start, stop):
                for t in range(start, stop):
                    frame(addr[0][t], gamma.ctypes.data, beta.ctypes.data, addr[1][t], addr[2][t], addr[3][t],
                          addr[4][t], scratch[k].ctypes.data, batch, width, x.dtype.type(1))

            blocks.run(block, spans)
        for storage, value in zip(output_storage, (y, n, mean, var)):
            storage[0] = value

    def pullback(self, inputs, outputs, output_grads):
        if not all(isinstance(g.type, DisconnectedType) for g in output_grads[1:]):
            raise NotImplementedError("BatchNormFrames: its statistics and saved arrays have no gradient")
        return BatchNormFramesGrad()(output_grads[0], outputs[1], outputs[3], inputs[1])


class BatchNormFramesGrad(native.CallsKernel, _NormGrad):
    """``(dy, n, var_tg, gamma_g)`` → ``(dx, d_gamma_g, d_beta_g)``: the backward of
    :class:`BatchNormFrames` (batch statistics) from the gradient of its y."""

    kernel_name = "batch_norm_frame_grad"

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        dy, n, var, gamma = contiguous(inputs, dtype)
        steps, batch, width = dy.shape
        dx = np.empty_like(dy)
        spans = blocks.split(steps, batch * width)
        d_gamma, d_beta = np.zeros((len(spans), width), np.float64), np.zeros((len(spans), width), np.float64)
        if dy.size:
            scratch = np.empty((len(spans), native.SCRATCH_ROWS, width), np.float64)
            frame_grad = native.kernel(self.kernel_name, dtype)
            addr = [Frames(a) for a in (dy, n, var, dx)]

            def block(k, start, stop):
                for t in range(start, stop):
                    frame_grad(addr[0][t], addr[1][t], addr[2][t], gamma.ctypes.data, addr[3][t],
                               scratch[k].ctypes.data, d_gamma[k].ctypes.data, d_beta[k].ctypes.data, batch, width,
                               dy.dtype.type(1))

            blocks.run(block, spans)
        d_gamma, d_beta = d_gamma.sum(axis=0), d_beta.sum(axis=0)
        for storage, value in zip(output_storage, (dx, d_gamma.astype(dtype), d_beta.astype(dtype))):
            storage[0] = value
