"""One compiled call per ensemble step: N models' one-frame graphs in one function.

Stepped model by model, an ensemble of N models costs N trips through the
serving machinery and N ``f_infer`` calls per frame. :func:`join` compiles the N
one-frame graphs into one ``f_joint_infer`` instead, and
:meth:`JointModel.run_sessions` steps the N sessions of one client, or of every
client in a batch (:func:`sophia.serving.ensemble.step_together`), with one call.

Contents
--------
- :func:`join` -- the :class:`JointModel` of N loaded models, or None where they
  cannot share one function.
- :class:`JointModel` -- the compiled ``f_joint_infer(input_nbj, time_nb, id_nb)
  -> output_nbk`` and :meth:`JointModel.run_sessions`.

The rule
--------
Model n's part of ``f_joint_infer`` is its own ``f_infer``'s graph: the same net
(parameters shared, not copied), the same engines and the same compile mode, on
row n of the inputs and on stored states of its own; no operation mixes models,
so a model's outputs equal its ``f_infer``'s bit for bit. Models of any width,
depth and unit type join; they must agree on their input and target widths
(as any ensemble does) and compile in one mode. The stored states stay in the
models' sessions (:class:`~sophia.serving.model.ModelSession`), so snapshots
are unchanged.

The function keeps its intermediate buffers between calls (its linker runs
without garbage collection where it has the choice): a small model's step
spends much of its time allocating them otherwise. The states and outputs
handed back are therefore copies. ``bench/serve_latency.py`` measures the step.

Example
-------
>>> joint = join([model_a, model_b])                                   # doctest: +SKIP
>>> sessions = [model_a.new_session([0]), model_b.new_session([0])]   # doctest: +SKIP
>>> joint.run_sessions([sessions], [np.zeros((2, 1, joint.input_dim), np.float32)],
...                    [None])[0].shape                                # doctest: +SKIP
(2, 1, 1)
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import pytensor as th
import pytensor.tensor as tt

from sophia.graph.net import Ports
from sophia.serving.model import DTYPE, Model
from sophia.serving.protocol import check_tokens


def join(models: Sequence) -> "JointModel | None":
    """One function for ``models`` (loaded :class:`~sophia.serving.model.Model` s,
    in ensemble order; one may appear more than once), or None where they cannot
    share one: another kind of model, different input or target widths, or
    graphs that compile in different modes. Compiles (seconds, cached modules
    aside); the models are not changed."""
    models = tuple(models)
    if not models or not all(isinstance(m, Model) for m in models):
        return None
    if len({(m.input_dim, m.target_dim, m.output_dim) for m in models}) > 1:
        return None
    plans = [m.net.compile_plan(m.mode, training=False, unroll=True) for m in models]
    if len({id(mode) for mode, _ in plans}) > 1:
        return None
    return JointModel(models, plans)


class JointModel:
    """N models' one-frame graphs compiled as one function (build it with :func:`join`).

    Attributes
    ----------
    models : tuple of Model
    num_models, input_dim, target_dim : int
    f_joint_infer : compiled ``f_joint_infer(input_nbj, time_nb, id_nb) -> output_nbk``
        float32 [N][B][J], float32 [N][B], int32 [N][B] -> float32 [N][B][K]; as a
        side effect it advances the stored states of every model.
    """

    def __init__(self, models, plans):
        self.models = tuple(models)
        self.num_models = len(models)
        self.input_dim, self.target_dim = models[0].input_dim, models[0].target_dim
        self._vocab_sizes = [m.vocab_size for m in models]
        with th.config.change_flags(floatX=DTYPE):    # as Net compiles f_infer
            self.f_joint_infer, v_states = self._compile(plans)
        self.f_joint_infer.trust_input = True   # run_sessions passes exact buffers
        # Model m's states are read and written through these storage cells.
        self._cells = [[v.container.storage for v in vs] for vs in v_states]
        self._lock = threading.Lock()

    def _compile(self, plans):
        """``(f_joint_infer, v_states)``: per model its stored states, as Net.new_states."""
        n = self.num_models
        p_input_nbj = tt.tensor3("p_input_nbj", dtype=DTYPE, shape=(n, None, self.input_dim))
        p_time_nb = tt.matrix("p_time_nb", dtype=DTYPE, shape=(n, None))
        p_id_nb = tt.matrix("p_id_nb", dtype="int32", shape=(n, None))
        s_outputs, updates, v_states = [], [], []
        for m, (model, (_, choices)) in enumerate(zip(self.models, plans)):
            ports = Ports(p_input_nbj[m][None], p_time_nb[m][None], p_id_nb[m][None], None)
            v_model_states = model.net.new_states(1, f"joint{m}")
            fwd = model.net.forward(ports, v_model_states, carry_frame=0, training=False,
                                    unroll=True, choices=choices)
            s_outputs.append(fwd.s_output_tbk[0])
            updates += zip(v_model_states, fwd.s_next_states)
            v_states.append(v_model_states)
        mode = plans[0][0]
        if hasattr(mode.linker, "allow_gc"):
            mode = mode.clone(link_kwargs={"allow_gc": False})
        f = th.function([p_input_nbj, p_time_nb, p_id_nb], tt.stack(s_outputs), updates=updates,
                        mode=mode, on_unused_input="ignore", name="f_joint_infer")
        return f, v_states

    def run_sessions(self, session_rows, frames, timestamps) -> list:
        """Advance sessions of these models by one frame, with one call.

        Parameters
        ----------
        session_rows : sequence of sequence of ModelSession
            Per client, its N sessions: model n's at n.
        frames : sequence of array_like
            Per client, its frames [N][B_c][J].
        timestamps : sequence of (array_like or None)
            Per client, its [B_c] timestamps, the same for its N sessions, or None.

        Returns
        -------
        list of ndarray
            Per client, float32 [N][B_c][K], a fresh array.
            Side effect: every session's states and counters advance, as
            ``ModelSession.step`` does.

        Raises
        ------
        ValueError
            For frames or timestamps of the wrong shape (no session changes) or
            sessions of other models.
        """
        for row in session_rows:
            if tuple(s.model for s in row) != self.models:
                raise ValueError("the sessions are not of this joint function's models")
        input_nbj = _concat([_frames(f, self.num_models, row[0].num_streams, self.input_dim)
                             for f, row in zip(frames, session_rows)], axis=1)
        if any(self._vocab_sizes):
            check_tokens(input_nbj, self._vocab_sizes)
        time_nb = _concat([np.concatenate([s.time_signal(stamps) for s in row])
                           for row, stamps in zip(session_rows, timestamps)], axis=1)
        id_nb = _concat([np.concatenate([s.id_1b for s in row]) for row in session_rows], axis=1)
        with self._lock:
            try:
                for m, cells in enumerate(self._cells):
                    for i, cell in enumerate(cells):
                        cell[0] = _concat([row[m].states[i] for row in session_rows], axis=0)
                output_nbk = self.f_joint_infer(input_nbj, time_nb, id_nb)
                return self._scatter(session_rows, output_nbk)
            finally:
                for cells in self._cells:
                    for cell in cells:
                        cell[0] = None

    def _scatter(self, session_rows, output_nbk) -> list:
        """Each client's rows of the output and of the new states (copies: the function
        reuses its buffers at its next call); its sessions' counters advance."""
        outputs, lo = [], 0
        for row in session_rows:
            hi = lo + row[0].num_streams
            for s, cells in zip(row, self._cells):
                s.states = [cell[0][lo:hi].copy() for cell in cells]
                s.count_b += 1
            outputs.append(output_nbk[:, lo:hi].copy())
            lo = hi
        return outputs


def _frames(frames_nbj, num_models, num_streams, input_dim) -> np.ndarray:
    """``frames_nbj`` as float32 [N][B][J] (no copy where it is one); ValueError otherwise."""
    frames_nbj = np.asarray(frames_nbj, dtype=DTYPE)
    if frames_nbj.shape != (num_models, num_streams, input_dim):
        raise ValueError(f"frames shape {frames_nbj.shape}, expected "
                         f"{(num_models, num_streams, input_dim)}")
    return frames_nbj


def _concat(arrays, axis) -> np.ndarray:
    """``np.concatenate(arrays, axis)``; a single array itself, not copied."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)
