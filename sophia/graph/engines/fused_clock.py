"""The Phased-LSTM gate's openness as one Op, for the graphs around the fused recurrences.

A clock-gated layer's openness k [T][B][i] depends on time alone
(:meth:`sophia.graph.clock.TimeGate.openness`), so the fused engine computes it for
the whole window before the recurrence. As graph code that is some forty elementwise
nodes forward and backward over T·B·i values, which the thin graphs of the fused
engine run one by one (``compile_mode = "auto"`` keeps their rewrites to a minimum,
:mod:`sophia.graph.modes`). Here it is one kernel pass each way
(``sophia_clock_openness`` in ``cells.c`` and its gradient, native code through
:mod:`~sophia.graph.engines.native`), with the same function, the leak α in
training graphs only. ``tests/test_engines.py`` checks it inside every clock-gated
fused layer, ``tests/test_fused_clock.py`` on its own.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> time, tau, shift, r_on = tt.matrix(), tt.vector(), tt.vector(), tt.vector()
>>> f = th.function([time, tau, shift, r_on], ClockOpenness(leak=0.0)(time, tau, shift, r_on))
>>> f(np.array([[0.25], [0.75]]), [1.0], [0.0], [0.999]).ravel().round(2)   # opening, then closing
array([0.5, 0.5])
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from sophia.graph.engines import blocks, native
from sophia.graph.engines.window import contiguous


def openness(gate, s_time_tb, training: bool):
    """k [T][B][i] of a :class:`sophia.graph.clock.TimeGate` at the window's times."""
    return ClockOpenness(leak=gate.leak if training else 0.0)(
        s_time_tb, gate.v_tau_i, gate.v_shift_i, gate.v_r_on_i)


class ClockOpenness(native.CallsKernel, Op):
    """``(time_tb, tau_i, shift_i, r_on_i)`` → k [T][B][i], with the leak α of the
    closed phase as a property (0 for inference). Requires the native kernels (a C compiler)."""

    kernel_name = "clock_openness"

    __props__ = ("leak",)

    def __init__(self, leak: float):
        self.leak = float(leak)

    def make_node(self, time, tau, shift, r_on):
        time = tt.as_tensor_variable(time)
        params = [tt.cast(tt.as_tensor_variable(v), time.dtype) for v in (tau, shift, r_on)]
        if time.ndim != 2 or any(v.ndim != 1 for v in params):
            raise TypeError("ClockOpenness expects time [T][B] and tau, shift, r_on [i]")
        return Apply(self, [time, *params], [tt.tensor3(dtype=time.dtype)])

    def infer_shape(self, fgraph, node, shapes):
        (t, b), (i,) = shapes[0], shapes[1]
        return [(t, b, i)]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        time, tau, shift, r_on = contiguous(inputs, dtype)
        steps, batch = time.shape
        k = np.empty((steps, batch, tau.size), dtype)
        leak = np.array([self.leak], dtype)
        if k.size:
            kernel, size, width = native.kernel(self.kernel_name, dtype), k.itemsize, tau.size

            def block(_, start, stop):
                kernel(time.ctypes.data + start * size, tau.ctypes.data, shift.ctypes.data, r_on.ctypes.data,
                       leak.ctypes.data, k.ctypes.data + start * width * size, stop - start, width, k.dtype.type(1))

            blocks.run(block, blocks.split(steps * batch, width))
        output_storage[0][0] = k

    def connection_pattern(self, node):
        return [[False], [True], [True], [True]]          # the time signal is data

    def pullback(self, inputs, outputs, output_grads):
        return [disconnected_type(), *ClockOpennessGrad(self.leak)(*inputs, output_grads[0])]


class ClockOpennessGrad(native.CallsKernel, Op):
    """``(time_tb, tau_i, shift_i, r_on_i, dk_tbi)`` → the gradients of tau, shift
    and r_on [i]: the backward of :class:`ClockOpenness`."""

    kernel_name = "clock_openness_grad"

    __props__ = ("leak",)

    def __init__(self, leak: float):
        self.leak = float(leak)

    def make_node(self, time, tau, shift, r_on, dk):
        inputs = [tt.as_tensor_variable(v) for v in (time, tau, shift, r_on, dk)]
        return Apply(self, inputs, [v.type() for v in inputs[1:4]])

    def infer_shape(self, fgraph, node, shapes):
        return list(shapes[1:4])

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        time, tau, shift, r_on, dk = contiguous(inputs, dtype)
        width = tau.size
        spans = blocks.split(time.size, width)
        grads = [np.zeros((len(spans), width), np.float64) for _ in range(3)]
        leak = np.array([self.leak], dtype)
        if dk.size:
            kernel, size = native.kernel(self.kernel_name, dtype), dk.itemsize

            def block(k, start, stop):
                kernel(time.ctypes.data + start * size, tau.ctypes.data, shift.ctypes.data, r_on.ctypes.data,
                       leak.ctypes.data, dk.ctypes.data + start * width * size, *[g[k].ctypes.data for g in grads],
                       stop - start, width, dk.dtype.type(1))

            blocks.run(block, spans)
        for storage, value in zip(output_storage, grads):
            storage[0] = value.sum(axis=0).astype(dtype)
