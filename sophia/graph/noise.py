"""Training noise: dropout and Gaussian input noise drawn from one shared generator.

What is here:

- :func:`shared_generator` -- the shared NumPy generator ``v_rng`` a training run
  draws its noise from; :func:`generator_state` and :func:`set_generator_state`
  read and restore it as a JSON-ready dict (the resume checkpoint keeps it, so a
  resumed run draws exactly what the run left alone would have drawn).
- :class:`Noise` -- the draws of one graph. Each draw (:meth:`Noise.dropout`,
  :meth:`Noise.gaussian`) takes the generator's latest symbolic state and moves it
  on; :attr:`Noise.updates` stores the final state when the compiled function
  runs, so every call of the function draws anew.

Only a training graph draws noise; evaluation, inference and serving graphs have
none, so they stay deterministic. PyTensor's JAX backend compiles a function with
its own copy of the generator, so under ``compile_mode = "JAX"`` the shared ``v_rng``
does not move on and its saved state does not replay the draws.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> noise = Noise(shared_generator(seed=0))
>>> x = tt.matrix("x")
>>> f = th.function([x], noise.dropout(x, 0.5), updates=noise.updates)
>>> sorted(set(f(np.ones((20, 20), "float32")).ravel().tolist()))
[0.0, 2.0]
"""
from __future__ import annotations

import numpy as np
import pytensor as th
import pytensor.tensor as tt
from pytensor.tensor.random.basic import normal, uniform

NOISE_STREAM = 0x5EED   # spawn key: the noise's stream is apart from initialisation and shuffling


def shared_generator(seed: int = 0):
    """A shared NumPy ``Generator`` variable, seeded from ``seed``'s own noise stream."""
    return th.shared(_generator(seed), name="noise.rng")


def generator_state(v_rng) -> dict:
    """The state of shared generator ``v_rng`` as a JSON-ready dict (its bit generator's)."""
    return v_rng.get_value(borrow=True).bit_generator.state


def set_generator_state(v_rng, state: dict) -> None:
    """Set shared generator ``v_rng`` to ``state`` from :func:`generator_state`.

    Raises ValueError (or TypeError) if ``state`` is not such a state."""
    generator = _generator(0)
    generator.bit_generator.state = state
    v_rng.set_value(generator, borrow=True)


class Noise:
    """The noise draws of one graph from shared generator ``v_rng``.

    Attributes
    ----------
    updates : ``{v_rng: its state after the draws built so far}`` (empty before any)
    """

    def __init__(self, v_rng):
        self.v_rng = self._s_rng = v_rng

    @property
    def updates(self) -> dict:
        return {} if self._s_rng is self.v_rng else {self.v_rng: self._s_rng}

    def _draw(self, rv_op, *params, like):
        """A sample of ``rv_op(*params)`` shaped and typed like ``like``; the generator's
        next state feeds the next draw."""
        kwargs = dict(size=like.shape, rng=self._s_rng, dtype=like.dtype)
        try:
            self._s_rng, s_sample = rv_op(*params, **kwargs, return_next_rng=True)
        except TypeError:        # PyTensor 2: the next state is the node's first output
            self._s_rng, s_sample = rv_op(*params, **kwargs).owner.outputs
        return s_sample

    def dropout(self, s_x, rate: float):
        """``s_x`` with each element zeroed with probability ``rate`` and the rest scaled by
        1 / (1 − rate) (inverted dropout: the expectation is ``s_x``, so inference uses
        ``s_x`` unchanged). Independent for every element, frame and stream. ``rate`` 0
        returns ``s_x`` and draws nothing."""
        if rate == 0:
            return s_x
        keep = 1.0 - rate
        s_u = self._draw(uniform, 0.0, 1.0, like=s_x)
        return s_x * tt.cast(tt.lt(s_u, keep), s_x.dtype) * np.asarray(1.0 / keep, s_x.dtype)

    def gaussian(self, s_x, std: float):
        """``s_x`` plus independent N(0, std²) noise on every element; ``std`` 0 returns
        ``s_x`` and draws nothing."""
        if std == 0:
            return s_x
        return s_x + self._draw(normal, 0.0, std, like=s_x)


def _generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(NOISE_STREAM,)))
