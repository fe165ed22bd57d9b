"""Small nets, windows and compiled cost/gradient functions for the graph tests."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytensor as th

from sophia.graph.net import Net
from sophia.options import ModelOptions

MODE = "FAST_COMPILE"


def make_net(dtype="float64", seed=0, **overrides) -> Net:
    """A tiny net (input 3, target 2, width 3, depth 1) with ``overrides`` applied."""
    options = ModelOptions(input_dim=3, target_dim=2, net_width=3, net_depth=1, num_ids=3,
                           init_scale=0.5, clock_period_lo=1.0, clock_period_hi=2.0,
                           clock_r_on=0.5)
    net = Net(dataclasses.replace(options, **overrides), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for v in net.v_params.values():            # move every parameter off its symmetric init
        value = v.get_value()
        v.set_value((value + rng.uniform(-0.3, 0.3, value.shape)).astype(dtype))
    return net


def make_window(net: Net, frames=5, batch=2, seed=1, time_tb=None, nan_fraction=0.0):
    """Random inputs, time signal (a reset mid-window by default), IDs and targets."""
    rng = np.random.default_rng(seed)
    o, dtype = net.options, net.dtype
    if time_tb is None:
        time_tb = np.tile(np.array([3.0, 4.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0][:frames])[:, None], (1, batch))
        time_tb[:, -1] = np.arange(frames) + 0.5 if batch > 1 else time_tb[:, -1]
    target = rng.standard_normal((frames, batch, o.target_dim))
    target[rng.random(target.shape) < nan_fraction] = np.nan
    return (rng.standard_normal((frames, batch, o.input_dim)).astype(dtype), np.asarray(time_tb, dtype),
            rng.integers(0, o.num_ids + 1, (frames, batch)).astype("int32"), target.astype(dtype))


def compile_cost(net: Net, window: int, step: int, training=True, unroll=False, loss_type="l2",
                 with_grads=True, batch=2, engine=None):
    """``f(input, time, id, target) -> [loss per target frame, loss_sum, n_frames, *grads]``
    from zero stored states, without any update; ``engine`` is the engine to prefer."""
    ports = net.ports(window if unroll else None)
    v_states = net.new_states(batch, "test")
    choices = net.choose_engines("auto", training=training, unroll=unroll, prefer=engine)
    fwd = net.forward(ports, v_states, carry_frame=step - 1, training=training, unroll=unroll,
                      choices=choices)
    loss_sum, n_frames = net.loss(fwd, ports, step, loss_type)
    outputs = [loss_sum / n_frames, loss_sum, n_frames, fwd.s_output_tbk]
    outputs += net.grads(loss_sum, n_frames) if with_grads else []
    return th.function(ports.inputs(), outputs, mode=MODE, on_unused_input="ignore")
