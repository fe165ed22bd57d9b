"""Run a step function over time, as ``scan`` or as one unrolled graph.

Both give identical results; unrolling trades compile time (and graph size) for
speed on short windows. The window length must then be known when building.
"""
from __future__ import annotations

import pytensor as th
import pytensor.tensor as tt


def recur(step, sequences, states, non_sequences=(), n_extras=0, unroll=False, n_steps=None):
    """Apply ``step`` frame by frame.

    Parameters
    ----------
    step : callable
        ``step(*frames_t, *states_prev, *non_sequences) -> list``: the new states
        (as many as ``states``) followed by ``n_extras`` per-frame outputs that are
        not fed back (e.g. batch statistics).
    sequences : list of tensors [T][...]
    states : list of initial states [B][...]
    unroll : bool
        Build a Python loop over ``n_steps`` frames instead of ``scan``.
    n_steps : int
        Static window length; required when ``unroll``.

    Returns
    -------
    list of tensors [T][...]: each state after every frame, then each extra.
    """
    if not unroll:
        return th.scan(step, sequences=list(sequences),
                       outputs_info=list(states) + [None] * n_extras,
                       non_sequences=list(non_sequences), return_list=True, return_updates=False)
    if n_steps is None:
        raise ValueError("unroll needs a static n_steps")
    collected = [[] for _ in range(len(states) + n_extras)]
    prev = list(states)
    for t in range(n_steps):
        out = step(*[s[t] for s in sequences], *prev, *non_sequences)
        out = out if isinstance(out, (list, tuple)) else [out]
        for bucket, value in zip(collected, out):
            bucket.append(value)
        prev = list(out[:len(states)])
    return [tt.stack(bucket) for bucket in collected]
