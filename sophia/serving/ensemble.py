"""An ensemble: the N models one client streams to, composed into one step.

Contents
--------
- :class:`EnsembleError` -- the models cannot serve together (the message says why).
- :class:`Ensemble` -- N models with one client's B streams: it checks that the
  models agree on their widths, maps each model's row of ID indices into its
  session, steps every model on its own input frames and stacks their outputs.

The models are anything with the serving ``Model`` interface
(:class:`sophia.serving.model.Model`: ``input_dim``, ``target_dim``, ``num_ids``
and ``new_session(id_indices)``, whose sessions have ``step(input_bj,
timestamps_b)`` and ``reset(streams)``). The server owns the transport; this
module owns the composition.

Example
-------
>>> ensemble = Ensemble(["a", "b"], [model_a, model_b], id_indices=[[0, 3], [0, 3]])  # doctest: +SKIP
>>> ensemble.step(np.zeros((2, 2, ensemble.input_dim), np.float32)).shape            # doctest: +SKIP
(2, 2, 1)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class EnsembleError(ValueError):
    """The models cannot be served together to this client."""


class Ensemble:
    """N models stepped together for one client's B streams.

    Parameters
    ----------
    names : sequence of str
        What the client called each model (its workspace), for error messages.
    models : sequence of Model
        The loaded models, shared with other clients.
    id_indices : sequence of sequence of int
        One row of B ID indices per model (ignored by a model without an ID
        embedding).

    Attributes
    ----------
    num_models, num_streams, input_dim, target_dim : int

    Raises
    ------
    EnsembleError
        If the models differ in (input_dim, target_dim), or an ID index is outside
        a model's ``[0, num_ids)``.
    """

    def __init__(self, names: Sequence[str], models: Sequence, id_indices: Sequence[Sequence[int]]):
        dims = [(m.input_dim, m.target_dim) for m in models]
        if len(set(dims)) > 1:
            listing = ", ".join(f"{name!r}: {d}" for name, d in zip(names, dims))
            raise EnsembleError(f"the workspaces differ in (input_dim, target_dim): {listing}")
        for name, model, row in zip(names, models, id_indices):
            bad = [i for i in row if model.num_ids is not None and not 0 <= i < model.num_ids]
            if bad:
                raise EnsembleError(f"ID index {bad[0]} is outside [0, {model.num_ids}) for {name!r}")
        self.num_models, self.num_streams = len(models), len(id_indices[0])
        self.input_dim, self.target_dim = dims[0]
        try:
            self.sessions = [m.new_session(list(row)) for m, row in zip(models, id_indices)]
        except ValueError as exc:
            raise EnsembleError(str(exc)) from None

    def step(self, frames_nbj: np.ndarray, timestamps_b: np.ndarray | None = None) -> np.ndarray:
        """Advance every stream of every model by one frame.

        Parameters
        ----------
        frames_nbj : ndarray, shape [N][B][J]
            Model n's input frames are ``frames_nbj[n]``.
        timestamps_b : ndarray, shape [B], optional
            One timestamp per stream, the same for every model.

        Returns
        -------
        ndarray of float32, shape [N][B][K]
            Side effect: every model's stream states advance.

        Raises
        ------
        RuntimeError
            If a model returns an output of the wrong shape (a broken model).
        """
        outputs_nbk = np.stack([np.asarray(s.step(frames_nbj[n], timestamps_b), dtype=np.float32)
                                for n, s in enumerate(self.sessions)])
        expected = (self.num_models, self.num_streams, self.target_dim)
        if outputs_nbk.shape != expected:
            raise RuntimeError(f"model output shape {outputs_nbk.shape} != {expected}")
        return outputs_nbk

    def reset(self, streams) -> None:
        """Those streams of every model restart from their initial state at their next frame."""
        for s in self.sessions:
            s.reset(streams)
