"""An ensemble: the N models one client streams to, composed into one step.

Contents
--------
- :class:`EnsembleError` -- the models cannot serve together (the message says why).
- :class:`Ensemble` -- N models with one client's B streams: it checks that the
  models agree on their widths, maps each model's row of ID indices into its
  session, steps every model on its own input frames and stacks their outputs;
  it takes a :class:`~sophia.serving.snapshot.Snapshot` of the streams' state and
  restores one, checking that it fits.
- :func:`step_together` -- several clients' ensembles of the same models, stepped
  together (batching across sessions, :mod:`sophia.serving.batching`).

One call per step: given the models' joint function
(:func:`sophia.serving.joint.join`), an ensemble steps its N models with one
call, and :func:`step_together` every client's N models with one call; without
one (models that cannot join, such as the tests' fakes), each model steps on its
own, one call per model. The outputs are the same either way.

The models are anything with the serving ``Model`` interface
(:class:`sophia.serving.model.Model`: ``input_dim``, ``target_dim``, ``output_dim``
(``target_dim`` × channels), ``layout``, ``num_ids``,
``fingerprint`` (32 bytes) and ``new_session(id_indices)``, whose sessions have
``step(input_bj, timestamps_b)``, ``reset(streams)``, ``state() -> {name:
ndarray}`` and ``set_state(arrays)``). The server owns the transport; this
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

from sophia.serving.snapshot import ModelState, Snapshot


def step_together(ensembles: Sequence["Ensemble"], frames: Sequence[np.ndarray],
                  timestamps: Sequence[np.ndarray | None]) -> list:
    """Advance several clients' ensembles of the same models by one frame: with one
    call for all their models and streams where they share a joint function
    (:meth:`JointModel.run_sessions <sophia.serving.joint.JointModel.run_sessions>`),
    else with one call per model (:meth:`Model.run_sessions`; a model without it, or
    a single ensemble, steps each session on its own).

    ``frames[e]`` is ensemble e's [N][B_e][J] and ``timestamps[e]`` its [B_e] or None.
    Returns, per ensemble, its [N][B_e][K] as :meth:`Ensemble.step` would, or the
    exception that stopped it (a broken model fails every ensemble of its call, and
    only those; a failed ensemble's later models are not stepped). Side effect: the
    streams advance.
    """
    joint = ensembles[0].joint
    if joint is not None and all(e.joint is joint for e in ensembles):
        try:
            return joint.run_sessions([e.sessions for e in ensembles], frames, timestamps)
        except Exception as exc:     # the call's: every ensemble of it
            return [exc] * len(ensembles)
    outputs = [[None] * ensembles[0].num_models for _ in ensembles]
    failed = [None] * len(ensembles)
    for n, model in enumerate(ensembles[0].models):
        live = [e for e in range(len(ensembles)) if failed[e] is None]
        sessions = [ensembles[e].sessions[n] for e in live]
        if len(live) > 1 and hasattr(model, "run_sessions"):
            try:
                prepared = [s.prepare(frames[e][n], timestamps[e]) for s, e in zip(sessions, live)]
                for e, result in zip(live, model.run_sessions(sessions, prepared)):
                    outputs[e][n] = result
            except Exception as exc:      # the model's: every session of its call
                for e in live:
                    failed[e] = exc
            continue
        for s, e in zip(sessions, live):
            try:
                outputs[e][n] = s.step(frames[e][n], timestamps[e])
            except Exception as exc:
                failed[e] = exc
    results = []
    for ensemble, out, exc in zip(ensembles, outputs, failed):
        try:
            results.append(exc if exc is not None else ensemble._stacked(out))
        except RuntimeError as shape_error:
            results.append(shape_error)
    return results


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
    joint : JointModel, optional
        The models' joint function (:func:`sophia.serving.joint.join` of the same
        models, in the same order, shared with other clients): each step is then
        one call. Without it, each model steps on its own.

    Attributes
    ----------
    num_models, num_streams, input_dim, target_dim : int
    output_dim : int
        Values per stream in a reply: ``target_dim`` × the models' channels.
    names : tuple of str
    fingerprints : tuple of bytes
        Each model's ``fingerprint``.
    vocab_sizes : tuple of int
        Each model's ``vocab_size``: > 0 for token inputs (each frame one index in
        ``[0, vocab_size)``), 0 for real vectors (and for a model without the attribute).
    id_indices : tuple of tuple of int
        The rows each model uses (zeros for a model without an ID embedding).
    joint : JointModel or None

    Raises
    ------
    EnsembleError
        If the models differ in (input_dim, target_dim) or output layout, or an ID index is outside
        a model's ``[0, num_ids)``.
    ValueError
        If ``joint`` is of other models.
    """

    def __init__(self, names: Sequence[str], models: Sequence, id_indices: Sequence[Sequence[int]],
                 joint=None):
        dims = [(m.input_dim, m.target_dim) for m in models]
        if len(set(dims)) > 1:
            listing = ", ".join(f"{name!r}: {d}" for name, d in zip(names, dims))
            raise EnsembleError(f"the workspaces differ in (input_dim, target_dim): {listing}")
        layouts = [m.layout for m in models]
        if len(set(layouts)) > 1:
            listing = ", ".join(f"{name!r}: {lay}" for name, lay in zip(names, layouts))
            raise EnsembleError(f"the workspaces differ in output layout: {listing}")
        for name, model, row in zip(names, models, id_indices):
            bad = [i for i in row if model.num_ids is not None and not 0 <= i < model.num_ids]
            if bad:
                raise EnsembleError(f"ID index {bad[0]} is outside [0, {model.num_ids}) for {name!r}")
        self.num_models, self.num_streams = len(models), len(id_indices[0])
        self.input_dim, self.target_dim = dims[0]
        self.output_dim = models[0].output_dim
        self.names = tuple(names)
        self.fingerprints = tuple(bytes(m.fingerprint) for m in models)
        self.vocab_sizes = tuple(int(getattr(m, "vocab_size", 0)) for m in models)
        self.id_indices = tuple(tuple(int(i) for i in row) if m.num_ids is not None
                                else (0,) * len(row) for m, row in zip(models, id_indices))
        if joint is not None and tuple(joint.models) != tuple(models):
            raise ValueError("the joint function is of other models")
        self.joint = joint
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
        ValueError
            If ``frames_nbj`` or ``timestamps_b`` has the wrong shape.
        """
        if self.joint is not None:
            return self.joint.run_sessions([self.sessions], [frames_nbj], [timestamps_b])[0]
        return self._stacked([s.step(frames_nbj[n], timestamps_b) for n, s in enumerate(self.sessions)])

    @property
    def models(self) -> tuple:
        """The models, in order (shared with other clients' ensembles)."""
        return tuple(s.model for s in self.sessions)

    def _stacked(self, outputs) -> np.ndarray:
        """The models' outputs [B][K] as one float32 [N][B][K]; RuntimeError if misshapen."""
        outputs_nbk = np.stack([np.asarray(o, dtype=np.float32) for o in outputs])
        expected = (self.num_models, self.num_streams, self.output_dim)
        if outputs_nbk.shape != expected:
            raise RuntimeError(f"model output shape {outputs_nbk.shape} != {expected}")
        return outputs_nbk

    def reset(self, streams) -> None:
        """Those streams of every model restart from their initial state at their next frame."""
        for s in self.sessions:
            s.reset(streams)

    def snapshot(self) -> Snapshot:
        """The state of every stream of every model (copies; nothing changes)."""
        return Snapshot(self.num_streams, tuple(
            ModelState(fingerprint, ids, session.state()) for fingerprint, ids, session
            in zip(self.fingerprints, self.id_indices, self.sessions)))

    def restore(self, snapshot: Snapshot) -> None:
        """Continue every stream from ``snapshot`` (taken by :meth:`snapshot` of an
        ensemble of the same models, streams and ID indices).

        Raises
        ------
        EnsembleError
            Naming what was expected, if the snapshot holds another number of
            models or streams, a model's fingerprint differs (other models, or
            another order), its ID indices differ, or its arrays are not the
            names, dtypes and shapes of this session's state. Every check is
            made before anything changes: on error the ensemble is unchanged.
        """
        if len(snapshot.models) != self.num_models or snapshot.num_streams != self.num_streams:
            raise EnsembleError(f"the state is of {len(snapshot.models)} models x "
                                f"{snapshot.num_streams} streams, this session has "
                                f"{self.num_models} x {self.num_streams}")
        for n, state in enumerate(snapshot.models):
            name = f"model {n} ({self.names[n]!r})"
            if state.fingerprint != self.fingerprints[n]:
                raise EnsembleError(f"{name}: the state is from another model (fingerprint "
                                    f"{state.fingerprint.hex()[:16]}..., expected "
                                    f"{self.fingerprints[n].hex()[:16]}...)")
            if tuple(state.id_indices) != self.id_indices[n]:
                raise EnsembleError(f"{name}: the state's ID indices {list(state.id_indices)} "
                                    f"differ from this session's {list(self.id_indices[n])}")
            want = _layout(self.sessions[n].state())
            if _layout(state.arrays) != want:
                raise EnsembleError(f"{name}: state arrays {_layout(state.arrays)}, "
                                    f"expected {want}")
        for session, state in zip(self.sessions, snapshot.models):
            session.set_state(state.arrays)


def _layout(arrays) -> str:
    return ", ".join(f"{name} {np.asarray(a).dtype} {list(np.shape(a))}"
                     for name, a in sorted(arrays.items()))
