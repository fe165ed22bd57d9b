"""The Op structure shared by the option and batch-norm windows.

:mod:`~sophia.graph.engines.fused_options` (peepholes, layer norm, clock gate) and
:mod:`~sophia.graph.engines.fused_bn` (recurrent batch norm) each have a forward Op
over a window and a gradient Op; the inputs and outputs of both families are laid out
the same way, which :class:`WindowRecurrence` and :class:`WindowRecurrenceGrad` build
and check. A subclass names its states, saved arrays, statistics and parameters, and
runs its frames in ``perform`` (with :func:`~sophia.graph.engines.window.forward`
and :func:`~sophia.graph.engines.window.backward`).
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from sophia.graph.engines.window import contiguous


class WindowRecurrence(Op):
    """A forward Op over a window.

    Inputs: ``xw_tbg, time_tb, W_h_ig, b_g, *initial_i, *stored_bi``, then the
    parameters (:meth:`_param_ndims`), at inference (``training`` False) the time steps
    ``step_tb`` (int) and each inner norm's population mean and var [S][w], then, with
    a clock, its openness k_tbi. Outputs: each state [T][B][i], the saved arrays
    [T][B][·] (``saved``: name, width — in units of i, or ``"1"`` for one value per
    row — and the option they need), then the batch statistics mean, var [T][w] of each
    inner norm (``stats_widths``, in units of i; width 0 at inference).
    """

    n_states = 1
    saved = ()
    stats_widths = ()
    training = True
    clock = False

    def _param_ndims(self):
        raise NotImplementedError

    def _extra_ndims(self):
        population = [2] + [2] * 2 * len(self.stats_widths) if not self.training else []
        return self._param_ndims() + population + [3] * self.clock

    @classmethod
    def n_outputs(cls):
        return cls.n_states + len(cls.saved) + 2 * len(cls.stats_widths)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        dtype = inputs[0].dtype
        ndims = [3, 2, 2, 1] + [1] * self.n_states + [2] * self.n_states + self._extra_ndims()
        if [x.ndim for x in inputs] != ndims:
            raise TypeError(f"{type(self).__name__} expects inputs of ndim {ndims}")
        step_at = 2 + 2 + 2 * self.n_states + len(self._param_ndims())
        inputs = inputs[:2] + [x if n == step_at and not self.training else tt.cast(x, dtype)
                               for n, x in enumerate(inputs[2:], start=2)]
        outputs = [tt.tensor3(dtype=dtype) for _ in range(self.n_states + len(self.saved))]
        outputs += [tt.matrix(dtype=dtype) for _ in range(2 * len(self.stats_widths))]
        return Apply(self, inputs, outputs)

    def _saved_width(self, spec, i):
        width, option = spec
        if option is not None and not getattr(self, option):
            return 0
        return 1 if width == "1" else width * i

    def infer_shape(self, fgraph, node, shapes):
        (t, b, _), i = shapes[0], shapes[2][0]
        return ([(t, b, i)] * self.n_states + [(t, b, self._saved_width(spec, i)) for _, *spec in self.saved]
                + [(t, w * i if self.training else 0) for w in self.stats_widths for _ in range(2)])

    def connection_pattern(self, node):
        outputs = self.n_outputs()
        n_params = 2 + 2 * self.n_states + len(self._param_ndims())
        connected = [True] * n_params + [False] * (len(node.inputs) - 2 - n_params - self.clock) + [True] * self.clock
        return [[True] * outputs, [False] * outputs] + [[c] * outputs for c in connected]

    def pullback(self, inputs, outputs, output_grads):
        if not self.training:
            raise NotImplementedError(f"{type(self).__name__}: population statistics are for inference graphs only")
        if not all(isinstance(g.type, DisconnectedType) for g in output_grads[self.n_states:]):
            raise NotImplementedError(f"{type(self).__name__}: its saved arrays and statistics have no gradient")
        given = tuple(not isinstance(g.type, DisconnectedType) for g in output_grads[:self.n_states])
        d_states = [g for g, ok in zip(output_grads, given) if ok]
        grads = self.grad_op(given)(*inputs[1:], *outputs, *d_states)
        return [grads[0], disconnected_type()] + list(grads[1:])

    def _allocate(self, steps, batch, i, dtype):
        """The states, the saved arrays and the statistics, empty."""
        states = [np.empty((steps, batch, i), dtype) for _ in range(self.n_states)]
        saved = [np.empty((steps, batch, self._saved_width(spec, i)), dtype) for _, *spec in self.saved]
        stats = [np.empty((steps, w * i if self.training else 0), dtype) for w in self.stats_widths for _ in range(2)]
        return states, saved, stats


class WindowRecurrenceGrad(Op):
    """The gradient Op of a :class:`WindowRecurrence` (``forward``) in training.
    Inputs: the forward Op's inputs but ``xw``, its outputs, then the gradients of its
    states that are given (``given``); outputs: the gradients of ``xw``, of every input
    after ``time``."""

    forward = WindowRecurrence
    training = True

    def _param_ndims(self):
        return self.forward._param_ndims(self)

    def _extra_ndims(self):
        return self.forward._extra_ndims(self)

    def _n_inputs(self):
        return 3 + 2 * self.forward.n_states + len(self._extra_ndims())

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        n_in = self._n_inputs()
        act = inputs[n_in + self.forward.n_states]
        return Apply(self, inputs, [act.type()] + [x.type() for x in inputs[1:n_in]])

    def infer_shape(self, fgraph, node, shapes):
        n_in = self._n_inputs()
        return [shapes[n_in + self.forward.n_states]] + list(shapes[1:n_in])     # act has the shape of xw

    def _unpack(self, inputs, dtype):
        """(reset_tb, inputs after time as arrays, forward outputs, d_states or None)."""
        n_in, n_out = self._n_inputs(), self.forward.n_outputs()
        reset, rest = np.asarray(inputs[0]) <= 0, contiguous(inputs[1:], dtype)
        params, outputs, given = rest[:n_in - 1], rest[n_in - 1:n_in - 1 + n_out], iter(rest[n_in - 1 + n_out:])
        return reset, params, outputs, [next(given) if ok else None for ok in self.given]
