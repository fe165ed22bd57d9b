"""An ensemble's forecast: its members' outputs combined into one, in the same layout.

The server streams to an ensemble and replies with every member's output frame
(docs/PROTOCOL.md); ``sophia-eval`` given several workspaces scores their
combination, and a client that wants one forecast combines the same way. The rule
follows the output layout (:mod:`sophia.graph.output_layout`), frame by frame and
target element by element, over N members:

==========================  ===================================================
output_activation           combined
==========================  ===================================================
identity                    the mean of the members' values
softmax, sigmoid            the mean of the probabilities (the mixture's)
gaussian (μ, s = log σ²)    the mixture's mean μ̄ = mean μ_n and variance
                            mean(σ_n² + μ_n²) − μ̄², as (μ̄, log variance): the
                            Gaussian with the mixture's first two moments
quantile (ascending q_c)    the mean of each level's values (quantile averaging),
                            so the levels still ascend
==========================  ===================================================

- :func:`combine` -- N outputs [N][T][C·k] → one [T][C·k].
- :func:`check_members` -- the members' options agree where combining needs it.

Example
-------
>>> import numpy as np
>>> from sophia.options import ModelOptions
>>> o = ModelOptions(target_dim=1, output_activation="gaussian")
>>> members = np.array([[[0.0, 0.0]], [[2.0, 0.0]]])       # μ 0 and 2, σ² 1 each
>>> mean, log_var = combine(members, o)[0]
>>> float(mean), round(float(np.exp(log_var)), 6)
(1.0, 2.0)
"""
from __future__ import annotations

import numpy as np

from sophia.graph.output_layout import channels_tck, num_channels

AGREE = ("input_dim", "target_dim", "output_activation", "quantiles", "vocab_size")


def combine(outputs_ntK, options) -> np.ndarray:
    """The ensemble's output [T][C·k] from its members' [N][T][C·k] (float64), by the
    rule of ``options.output_activation`` (the module docstring). One member: itself."""
    outputs_ntK = np.asarray(outputs_ntK, np.float64)
    if options.output_activation != "gaussian":
        return outputs_ntK.mean(axis=0)
    count = num_channels(options)
    parts = [channels_tck(o, count) for o in outputs_ntK]            # each [T][2][k]
    mean_ntk = np.stack([p[:, 0] for p in parts])
    second_ntk = np.stack([np.exp(p[:, 1]) for p in parts]) + mean_ntk ** 2
    mean_tk = mean_ntk.mean(axis=0)
    variance_tk = np.maximum(second_ntk.mean(axis=0) - mean_tk ** 2, np.finfo(np.float64).tiny)
    return np.concatenate([mean_tk, np.log(variance_tk)], axis=1)


def check_members(named_options) -> None:
    """Raise ValueError naming the option and the two workspaces where members differ
    in one of :data:`AGREE` (their outputs could not be combined into one layout).

    ``named_options``: ``[(workspace, ModelOptions)]``, the first is the reference."""
    (first, reference), *others = named_options
    for name, options in others:
        for field in AGREE:
            if getattr(options, field) != getattr(reference, field):
                raise ValueError(f"{name}: {field} is {getattr(options, field)!r} but "
                                 f"{first} has {getattr(reference, field)!r}; an ensemble's "
                                 f"members must agree on {', '.join(AGREE)}")
