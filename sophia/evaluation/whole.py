"""Offline inference over whole sequences at once, for models that cannot run frame
by frame (bidirectional ones: their output at a frame depends on later frames).

- :class:`WholeSequenceModel` -- a workspace's net with ``f_infer`` compiled for
  windows of any length.
- :func:`run_whole_sequences` -- every sequence of a dataset, ``streams`` at a
  time as the streams of one window; :func:`run_model`'s contract.

Each group of sequences (the longest first) is one window as long as its longest
member. A shorter member is padded as the training iterator pads (input 0, time
-1, its ID), the stored states start at zero and every sequence starts with a
reset (time 0), so each sequence's output is the one it gets alone. The time
signal is :meth:`Dataset.time_signal` (the timestamps minus the first, or the
frame index), as in training.

Example
-------
>>> model = WholeSequenceModel("runs/bidir")                            # doctest: +SKIP
>>> outputs = run_whole_sequences(model, Dataset.open("data/toy", "test"), model.ids)  # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from sophia.evaluation.inference import run_in_groups
from sophia.graph.output_layout import num_channels
from sophia.serving.model import load_workspace_net
from sophia.training.iterator import PAD_TIME


class WholeSequenceModel:
    """A workspace's net, its ``f_infer`` compiled over windows of any length.

    Parameters
    ----------
    workspace_path : str or PathLike
    mode : str, optional
        Compile mode of ``f_infer`` (default ``auto``).

    Attributes: ``net``, ``ids`` (its ``ids.order``), ``input_dim``, ``target_dim``,
    ``channels``, ``output_dim``, ``vocab_size``, ``num_ids`` (as
    :class:`~sophia.serving.model.Model`'s). Raises
    :class:`~sophia.serving.paths.ModelLoadError` as
    :func:`~sophia.serving.model.load_workspace_net` does.
    """

    def __init__(self, workspace_path, mode: str = "auto"):
        self.net, self.ids = load_workspace_net(workspace_path)
        o = self.net.options
        self.input_dim, self.target_dim, self.vocab_size = o.input_dim, o.target_dim, o.vocab_size
        self.channels = num_channels(o)
        self.output_dim = o.target_dim * self.channels
        self.num_ids = len(self.ids) + 1 if o.learn_id_embedding else None
        self.f_infer, self.v_states = self.net.compile_infer(window_size=None, mode=mode)

    def infer(self, input_tbj, time_tb, id_tb) -> np.ndarray:
        """Outputs [T][B][K] (K = output_dim) of one window, from zero stored states."""
        self.net.reset_states(self.v_states, batch_size=time_tb.shape[1])
        return self.f_infer(input_tbj, time_tb, id_tb)


def run_whole_sequences(model: WholeSequenceModel, dataset, ids, streams: int = 8) -> list[np.ndarray]:
    """The model's outputs over every sequence of ``dataset``, each sequence whole.

    Parameters and return value as :func:`sophia.evaluation.inference.run_model`'s:
    a float32 [T][output_dim] output per sequence, in the dataset's order.
    Raises ValueError for ``streams < 1``, DatasetError for bad timestamps.
    """
    return run_in_groups(model, dataset, ids, streams, _run_whole_group)


def _run_whole_group(model, dataset, group, id_rows, outputs):
    """One padded window of the sequences of ``group`` (longest first), from zero states."""
    steps = dataset.sequences[group[0]].length
    input_tbj = np.zeros((steps, len(group), model.input_dim), np.float32)
    time_tb = np.full((steps, len(group)), PAD_TIME, np.float32)
    id_tb = np.tile(np.asarray(id_rows, np.int32), (steps, 1))
    for b, i in enumerate(group):
        length = dataset.sequences[i].length
        input_tbj[:length, b] = dataset.input(i)
        time_tb[:length, b] = dataset.time_signal(i)
    output_tbk = model.infer(input_tbj, time_tb, id_tb)
    for b, i in enumerate(group):
        outputs[i][:] = output_tbk[:dataset.sequences[i].length, b]
