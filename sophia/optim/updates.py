"""Optimizers as a *force* (the direction of a step) times an *update* rule.

A force turns gradients into directions: ``vanilla`` (the gradient), ``rmsprop``,
``adadelta``, ``adam`` or ``amsgrad``. An update rule moves the parameters along them, scaled
by the learning rate: ``sgd``, ``momentum`` or ``nesterov``. Any force combines
with any update. Gradient-norm clipping is a separate step before the force. Decoupled
weight decay (``weight_decay``; AdamW, Loshchilov & Hutter 2019) shrinks the weight
matrices beside the update, never through the gradient or the force's moments.
Optionally the optimizer also keeps an exponential moving average of the parameters
(``ema_decay``; Polyak averaging), which evaluation and saved models can use.

Forces and update rules work on one flat vector of all parameters and keep their
state in shared variables; :class:`Optimizer` gathers the ordered
``{shared_variable: new_expression}`` updates and the state, so one compiled
function resets all optimizer state (after an annealing rollback).
The learning rate is a symbolic input, so changing it never recompiles.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> w = th.shared(np.array([3.0]), name="w")
>>> lr = tt.scalar("lr", dtype="float64")
>>> opt = Optimizer([w], [2 * w], lr, force_type="adam", update_type="sgd")
>>> f = th.function([lr], [], updates=opt.updates)
>>> _ = f(0.1); round(float(w.get_value()[0]), 6)
2.9
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytensor as th
import pytensor.tensor as tt


def clip_by_global_norm(grads, max_norm: float):
    """Scale ``grads`` so their joint L2 norm is at most ``max_norm`` (0 = no clipping).

    Returns ``(clipped_grads, s_norm)`` where ``s_norm`` is the norm before clipping.
    """
    # one sum over the stacked squares, not a chain of adds: the rewrites would fuse that into
    # one Elemwise of as many inputs as parameters, which NumPy's ufuncs (the Python linker's
    # perform) cannot take beyond 32
    s_norm = tt.sqrt(tt.sum(tt.stack([tt.sum(tt.sqr(g)) for g in grads])))
    if max_norm <= 0:
        return list(grads), s_norm
    scale = tt.minimum(1.0, max_norm / (s_norm + 1e-12))
    return [g * tt.cast(scale, g.dtype) for g in grads], s_norm


def decays(param) -> bool:
    """Whether ``weight_decay`` shrinks ``param``: every parameter of two or more axes
    (weight matrices, weight norm's directions V, the ID embedding), none of one
    (biases, norm and weight-norm gains, peepholes, clock parameters, residual gates,
    initial states) -- the rule of nanoGPT's AdamW groups."""
    return param.ndim >= 2


def _flat(tensors):
    """One flat vector of ``tensors``' elements, in order."""
    return tt.concatenate([tt.flatten(x) for x in tensors]) if len(tensors) > 1 else tt.flatten(tensors[0])


class _State:
    """Creates zero-initialised shared state vectors shaped like the flat parameter
    vector (or scalars) and remembers them."""

    def __init__(self, size: int, dtype: str):
        self.size, self.dtype, self.variables = size, dtype, []

    def vector(self, tag: str):
        v = th.shared(np.zeros(self.size, self.dtype), name=f"params.{tag}")
        self.variables.append(v)
        return v

    def scalar(self, name: str):
        v = th.shared(np.zeros((), self.dtype), name=name)
        self.variables.append(v)
        return v


# A force maps the flat gradient g to a direction: force(g, state, opts) -> (d, updates).
def vanilla(g, state, opts):
    """Direction = gradient."""
    return g, OrderedDict()


def rmsprop(g, state, opts):
    """g / sqrt(E[g²] + ε) with E[g²] a running average (decay ``rms_decay``)."""
    rho, eps = opts["rms_decay"], opts["force_epsilon"]
    v_ms = state.vector("ms")
    ms = rho * v_ms + (1 - rho) * tt.sqr(g)
    return g / tt.sqrt(ms + eps), OrderedDict({v_ms: ms})


def adadelta(g, state, opts):
    """Zeiler 2012: sqrt(E[Δ²] + ε) / sqrt(E[g²] + ε) · g (decay ``adadelta_decay``)."""
    rho, eps = opts["adadelta_decay"], opts["force_epsilon"]
    v_ms, v_md = state.vector("ms"), state.vector("md")
    ms = rho * v_ms + (1 - rho) * tt.sqr(g)
    delta = tt.sqrt(v_md + eps) / tt.sqrt(ms + eps) * g
    return delta, OrderedDict({v_ms: ms, v_md: rho * v_md + (1 - rho) * tt.sqr(delta)})


def adam(g, state, opts):
    """Kingma & Ba 2015: m̂ / (sqrt(v̂) + ε) with bias-corrected moments."""
    b1, b2, eps = opts["adam_beta1"], opts["adam_beta2"], opts["force_epsilon"]
    v_t, v_m, v_v = state.scalar("adam.t"), state.vector("m"), state.vector("v")
    t = v_t + 1
    m = b1 * v_m + (1 - b1) * g
    v = b2 * v_v + (1 - b2) * tt.sqr(g)
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return m_hat / (tt.sqrt(v_hat) + eps), OrderedDict({v_t: t, v_m: m, v_v: v})


def amsgrad(g, state, opts):
    """Reddi, Kale & Kumar 2018: Adam whose denominator is the largest second moment so
    far, max(v_max, v) bias-corrected as Adam's (PyTorch's ``amsgrad=True``). A step
    never grows because recent gradients shrank, as Adam's do near a solved task."""
    b1, b2, eps = opts["adam_beta1"], opts["adam_beta2"], opts["force_epsilon"]
    v_t, v_m, v_v, v_vmax = (state.scalar("adam.t"), state.vector("m"), state.vector("v"),
                             state.vector("v_max"))
    t = v_t + 1
    m = b1 * v_m + (1 - b1) * g
    v = b2 * v_v + (1 - b2) * tt.sqr(g)
    v_max = tt.maximum(v_vmax, v)
    m_hat, v_hat = m / (1 - b1 ** t), v_max / (1 - b2 ** t)
    return m_hat / (tt.sqrt(v_hat) + eps), OrderedDict({v_t: t, v_m: m, v_v: v, v_vmax: v_max})


# An update rule maps the direction d to the change of the flat parameter vector:
# update(d, s_lr, state, mu) -> (change, updates).
def sgd(d, s_lr, state, mu):
    """p ← p − lr · d."""
    return -s_lr * d, OrderedDict()


def momentum(d, s_lr, state, mu):
    """v ← μ v − lr · d;  p ← p + v."""
    v_vel = state.vector("velocity")
    vel = mu * v_vel - s_lr * d
    return vel, OrderedDict({v_vel: vel})


def nesterov(d, s_lr, state, mu):
    """v ← μ v − lr · d;  p ← p + μ v − lr · d (Sutskever et al. 2013)."""
    v_vel = state.vector("velocity")
    vel = mu * v_vel - s_lr * d
    return mu * vel - s_lr * d, OrderedDict({v_vel: vel})


FORCES = {"vanilla": vanilla, "rmsprop": rmsprop, "adadelta": adadelta, "adam": adam,
          "amsgrad": amsgrad}
UPDATES = {"sgd": sgd, "momentum": momentum, "nesterov": nesterov}


class Optimizer:
    """Updates of ``params`` for ``grads``: clipping → force → update.

    The force and the update rule run once on all parameters as one flat vector
    (the gradients concatenated; the optimizer state is flat vectors named
    ``params.<tag>``), and each parameter takes its slice of the change: a few
    dozen graph nodes instead of a dozen per parameter, which is most of the
    graph-building and compile time a small net saves.

    Attributes
    ----------
    updates : OrderedDict {shared: expression} for the parameters and optimizer state.
    v_state : list of the optimizer's shared state variables.
    s_grad_norm : the gradients' global norm before clipping.

    With ``ema_decay`` d > 0 every step also updates a flat running average
    a ← d·a + (1 − d)·p of the new parameters (state ``params.ema`` and
    ``ema.t``, zero after a reset); :meth:`averaged_values` reads it
    bias-corrected, a / (1 − dᵗ), as Adam corrects its moments, so the average
    right after a reset is the parameters themselves, not a pull towards zero.

    With ``weight_decay`` w > 0 every step is p ← (1 − lr·w)·p + change for the
    parameters :func:`decays` picks and p ← p + change for the rest, where change is
    what the update rule makes of the force (decoupled: the decay enters neither the
    gradient, nor the clipping, nor the moments).
    """

    def __init__(self, params, grads, s_lr, force_type="adam", update_type="sgd",
                 update_mu=0.9, grad_norm_clip=0.0, rms_decay=0.9, adadelta_decay=0.95,
                 adam_beta1=0.9, adam_beta2=0.999, force_epsilon=1e-6, ema_decay=0.0,
                 weight_decay=0.0):
        if force_type not in FORCES:
            raise ValueError(f"force_type must be one of {', '.join(FORCES)}; got {force_type!r}")
        if update_type not in UPDATES:
            raise ValueError(f"update_type must be one of {', '.join(UPDATES)}; got {update_type!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {ema_decay!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
        params = list(params)
        self.params, self.ema_decay, self.weight_decay = params, ema_decay, weight_decay
        with th.config.change_flags(floatX=params[0].dtype):   # float constants keep the params' dtype
            self._build(params, grads, s_lr, force_type, update_type, update_mu, grad_norm_clip,
                        dict(rms_decay=rms_decay, adadelta_decay=adadelta_decay, adam_beta1=adam_beta1,
                             adam_beta2=adam_beta2, force_epsilon=force_epsilon))

    def _build(self, params, grads, s_lr, force_type, update_type, update_mu, grad_norm_clip, opts):
        shapes = [p.get_value(borrow=True).shape for p in params]     # fixed for a net's life
        offsets = np.cumsum([0] + [int(np.prod(shape)) for shape in shapes])
        state = _State(int(offsets[-1]), params[0].dtype)
        grads, self.s_grad_norm = clip_by_global_norm(grads, grad_norm_clip)
        s_grad_j = _flat(grads)
        s_direction_j, self.updates = FORCES[force_type](s_grad_j, state, opts)
        s_lr = tt.cast(s_lr, params[0].dtype)
        s_change_j, updates = UPDATES[update_type](s_direction_j, s_lr, state, update_mu)
        self.updates.update(updates)
        s_kept = 1 - s_lr * self.weight_decay        # the share of a decayed weight a step keeps
        for p, shape, lo, hi in zip(params, shapes, offsets[:-1], offsets[1:]):
            s_p = p * s_kept if self.weight_decay > 0 and decays(p) else p
            self.updates[p] = s_p + tt.reshape(s_change_j[lo:hi], shape)
        self._shapes, self._offsets = shapes, offsets
        self.v_ema_j = self.v_ema_t = None
        if self.ema_decay > 0:
            d = self.ema_decay
            self.v_ema_j, self.v_ema_t = state.vector("ema"), state.scalar("ema.t")
            s_new_j = (_flat([self.updates[p] for p in params]) if self.weight_decay > 0
                       else _flat(params) + s_change_j)
            self.updates[self.v_ema_j] = d * self.v_ema_j + (1 - d) * s_new_j
            self.updates[self.v_ema_t] = self.v_ema_t + 1
        self.v_state = state.variables

    @classmethod
    def from_options(cls, params, grads, s_lr, train_options):
        """An optimizer configured by :class:`sophia.options.TrainOptions`."""
        o = train_options
        return cls(params, grads, s_lr, force_type=o.force_type, update_type=o.update_type,
                   update_mu=o.update_mu, grad_norm_clip=o.grad_norm_clip, rms_decay=o.rms_decay,
                   adadelta_decay=o.adadelta_decay, adam_beta1=o.adam_beta1,
                   adam_beta2=o.adam_beta2, force_epsilon=o.force_epsilon, ema_decay=o.ema_decay,
                   weight_decay=o.weight_decay)

    def averaged_values(self) -> list:
        """The parameters' running average, bias-corrected, one array per parameter
        (shaped like it, in ``params`` order): the current values when ``ema_decay``
        is 0 or no step has run since the last reset. Reads state; changes nothing."""
        if self.v_ema_j is None or float(self.v_ema_t.get_value()) == 0:
            return [p.get_value() for p in self.params]
        steps = float(self.v_ema_t.get_value())
        ema_j = self.v_ema_j.get_value(borrow=True) / (1.0 - self.ema_decay ** steps)
        return [ema_j[lo:hi].reshape(shape).astype(p.dtype)
                for p, shape, lo, hi in zip(self.params, self._shapes, self._offsets[:-1], self._offsets[1:])]

    def compile_reset(self, mode=None):
        """``f_reset()``: sets every optimizer state variable to zero (moments, velocities, step count)."""
        return th.function([], [], updates=[(v, tt.zeros_like(v)) for v in self.v_state], mode=mode)
