"""Offline inference through the serving step: outputs equal the server's by construction.

- :func:`id_indices` -- each sequence's row of the ID embedding (``ids.order``;
  an ID not in it gets ``len(ids)``, the unseen row).
- :func:`run_model` -- every sequence of a dataset, frame by frame through
  :meth:`sophia.serving.model.ModelSession.step`.

Sequences are run ``streams`` at a time as the streams of one fresh session (so
each starts from the initial state, with its own ID), the longest first; a
stream whose sequence has ended idles on zero input until the others end, and
its outputs are dropped. With ``.time`` files every step gets the sequence's
timestamps (minus its first, as :meth:`Dataset.time_signal` gives them: the
session subtracts its own first timestamp, 0, so the time signal is the one
the server would compute from the raw stamps); without them the session's
frame counter is the time signal.

Example
-------
>>> model = load_model("models/lstm_a")                               # doctest: +SKIP
>>> outputs = run_model(model, Dataset.open("data/toy", "test"), ids, streams=8)  # doctest: +SKIP
>>> outputs[0].shape == (dataset.sequences[0].length, model.output_dim)  # doctest: +SKIP
True
"""
from __future__ import annotations

import numpy as np


def id_indices(dataset, ids) -> list[int]:
    """The ID index of each sequence of ``dataset``: its position in ``ids``, or
    ``len(ids)`` for an ID not seen in training."""
    position = {seq_id: n for n, seq_id in enumerate(ids)}
    return [position.get(s.seq_id, len(ids)) for s in dataset.sequences]


def run_model(model, dataset, ids, streams: int = 8) -> list[np.ndarray]:
    """The model's outputs over every sequence of ``dataset``, frame by frame.

    Parameters
    ----------
    model : sophia.serving.model.Model
    dataset : sophia.data.dataset.Dataset
        Its ``input_dim`` and ``target_dim`` must be the model's.
    ids : list of str
        The workspace's ``ids.order`` ([] without an ID embedding).
    streams : int, optional
        Sequences run together as the streams of one session.

    Returns
    -------
    list of ndarray of float32
        Output [T][output_dim] of each sequence, in the dataset's order
        (``output_dim = target_dim × channels``, channel-major: every channel of a
        probabilistic model, as the server replies).

    Raises
    ------
    ValueError
        For ``streams < 1``; :class:`~sophia.data.dataset.DatasetError` for bad timestamps.
    """
    return run_in_groups(model, dataset, ids, streams, _run_group)


def run_in_groups(model, dataset, ids, streams, run_group) -> list[np.ndarray]:
    """Outputs [T][output_dim] of every sequence of ``dataset``, in its order: the
    non-empty sequences, longest first, go to ``run_group(model, dataset, group,
    id_rows, outputs)`` ``streams`` at a time, which fills ``outputs[i]`` for each
    index ``i`` of ``group``. Raises ValueError for ``streams < 1``."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    rows = id_indices(dataset, ids)
    outputs = [np.zeros((s.length, model.output_dim), np.float32) for s in dataset.sequences]
    order = sorted((i for i, s in enumerate(dataset.sequences) if s.length),
                   key=lambda i: -dataset.sequences[i].length)
    for start in range(0, len(order), streams):
        group = order[start:start + streams]
        run_group(model, dataset, group, [rows[i] for i in group], outputs)
    return outputs


def _run_group(model, dataset, group, rows, outputs) -> None:
    """Run the sequences ``group`` as the streams of one new session; fills ``outputs``."""
    session = model.new_session(rows)
    inputs = [dataset.input(i) for i in group]
    lengths = [dataset.sequences[i].length for i in group]
    times = [dataset.time_signal(i) for i in group] if dataset.has_time else None
    input_bj = np.zeros((len(group), model.input_dim), np.float32)
    stamps_b = np.zeros(len(group), np.float64)
    for t in range(max(lengths)):
        for b, length in enumerate(lengths):
            live = t < length
            input_bj[b] = inputs[b][t] if live else 0.0
            if times is not None:
                stamps_b[b] = times[b][min(t, length - 1)]
        output_bk = session.step(input_bj, stamps_b if times is not None else None)
        for b, i in enumerate(group):
            if t < lengths[b]:
                outputs[i][t] = output_bk[b]
