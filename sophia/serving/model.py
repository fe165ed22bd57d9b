"""One trained model served frame by frame: a workspace compiled for one-frame inference.

Contents
--------
- :func:`load_model` — rebuild a workspace's net (:mod:`sophia.workspace`) and
  compile its one-frame ``f_infer``; a bidirectional model is refused (its
  outputs depend on later frames). :func:`load_workspace_net` rebuilds the net only.
- :class:`Model` — the compiled net, shared by every client of the server.
- :class:`ModelSession` — one client's streams: stored states, frame counters and
  first timestamps; :meth:`ModelSession.step` advances them by one frame,
  :meth:`ModelSession.state` and :meth:`ModelSession.set_state` export and import
  them (state snapshots, :mod:`sophia.serving.snapshot`).
- :func:`fingerprint` — a digest of what a net computes (options, IDs, parameters).

How N models serve one client together is :mod:`sophia.serving.ensemble`; how
they step with one call is :mod:`sophia.serving.joint`.

Compile mode
------------
``f_infer`` is compiled once per Model with ``unroll=True`` (no scan for one frame)
in :data:`MODE` = ``CVM``: the medians of the modes are alike, but CVM has the
steadiest tail and no just-in-time compile on the first frame
(``bench/serve_latency.py`` measures them). On a small machine the server runs
with one BLAS thread (``OPENBLAS_NUM_THREADS=1``, set by ``sophia.py``): threads
competing for the cores make the tail many times the median.

Per step, :meth:`ModelSession.step` adds little to the bare ``f_infer`` call:
states are swapped in and out by reference through the shared variables'
storage cells (what ``set_value(borrow=True)`` does, minus its type check), the
input buffers are preallocated and ``f_infer`` trusts its inputs.

Example
-------
>>> model = load_model("models/lstm_a")                  # doctest: +SKIP
>>> session = model.new_session([0, 7])                  # two streams, ID indices
>>> session.step(np.zeros((2, model.input_dim), np.float32)).shape   # doctest: +SKIP
(2, 1)
>>> session.reset([1])                                   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from sophia.graph import output_layout
from sophia.graph.net import Net
from sophia.options import ModelOptions, OptionError, to_dict
from sophia.serving.paths import ModelLoadError
from sophia.serving.protocol import check_tokens
from sophia.workspace import (OPTIONS, Workspace, WorkspaceError, load_ids, load_model_options,
                              load_params, set_params)

MODE = "CVM"
DTYPE = "float32"
NOT_CAUSAL = ("the model is bidirectional: its output at a frame depends on the frames after it, "
              "so it cannot be served causally, frame by frame; evaluate it offline over whole "
              "sequences (sophia-eval)")
# Model options added since 0.2.0, left out of a fingerprint while at their default, so
# that a model's fingerprint (and so the state snapshots saved with it) is 0.2.0's.
OPTIONS_SINCE_0_2 = ("vocab_size", "token_embedding_dim", "quantiles", "bidirectional", "input_skip")


def load_model(workspace_path, mode: str = MODE) -> "Model":
    """Load and compile the model of a workspace.

    Parameters
    ----------
    workspace_path : str or PathLike
        A workspace (:mod:`sophia.workspace`): ``options.json``, ``params.npz``
        and, with an ID embedding, ``ids.order`` are read.
    mode : str, optional
        The compile mode of ``f_infer`` (see the module docstring).

    Returns
    -------
    Model

    Raises
    ------
    ModelLoadError
        As :func:`load_workspace_net` does, and for a bidirectional model, which
        cannot run causally, frame by frame.
    """
    net, ids = load_workspace_net(workspace_path)
    if net.options.bidirectional:
        raise ModelLoadError(f"{Path(workspace_path) / OPTIONS}.json: {NOT_CAUSAL}")
    return Model(net, ids, mode=mode)


def load_workspace_net(workspace_path) -> tuple[Net, list]:
    """A workspace's net (float32, its parameters loaded, nothing compiled) and its
    ``ids.order``.

    Raises
    ------
    ModelLoadError
        Naming the file, for a missing directory or file, bad JSON, options that
        do not validate, an ``ids.order`` that does not match ``num_ids``, or
        parameters that are missing, misshapen or not finite.
    """
    ws_path = Path(workspace_path)
    if not ws_path.is_dir():
        raise ModelLoadError(f"workspace {ws_path} is not a directory")
    ws = Workspace(ws_path, create=False)
    try:
        options = load_model_options(ws)
        ids = load_ids(ws, options)
        try:
            net = Net(options, dtype=DTYPE)
        except OptionError as exc:
            raise WorkspaceError(f"{ws.file(OPTIONS, '.json')}: {exc}") from None
        set_params(ws, net, load_params(ws))
    except WorkspaceError as exc:
        raise ModelLoadError(str(exc)) from None
    return net, ids


def fingerprint(net: Net, ids) -> bytes:
    """SHA-256 of a net's model options (those of :data:`OPTIONS_SINCE_0_2` only where
    they differ from their default), its ``ids.order`` and every parameter and
    buffer (name, dtype, shape, little-endian bytes): equal for two copies of a
    workspace, different as soon as one value differs. Returns 32 bytes."""
    defaults = to_dict(ModelOptions())
    options = {name: value for name, value in to_dict(net.options).items()
               if name not in OPTIONS_SINCE_0_2 or value != defaults[name]}
    digest = hashlib.sha256(b"sophia-model-fingerprint-1\0")
    digest.update(json.dumps(options, sort_keys=True).encode("utf-8"))
    digest.update(json.dumps(list(ids)).encode("utf-8"))
    for name, value in sorted(net.get_values().items()):
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        digest.update(f"\0{name}\0{value.dtype.str}\0{value.shape}\0".encode("utf-8"))
        digest.update(value.tobytes())
    return digest.digest()


class Model:
    """A net compiled for one-frame inference, shared by all sessions.

    Parameters
    ----------
    net : Net
        With its parameters loaded. Its stored states are used as a scratch
        slot: each session swaps its own states in for the duration of a step.
    ids : list of str
        The workspace's ``ids.order`` ([] without an ID embedding).
    mode : str, optional
        Compile mode of ``f_infer``.

    Attributes
    ----------
    input_dim, target_dim : int
    channels : int
        Values per target element (:func:`~sophia.graph.output_layout.num_channels`:
        1, or 2 for gaussian, Q for quantile).
    output_dim : int
        ``target_dim × channels``: the width of an output frame, channel-major.
    layout : str
        The output activation and, for quantiles, the levels: models whose layouts
        differ do not form one ensemble.
    vocab_size : int
        > 0 for token inputs (``input_dim`` 1, each frame an integer index in
        ``[0, vocab_size)``, checked by :meth:`ModelSession.prepare`); 0 otherwise.
    num_ids : int or None
        ``len(ids) + 1`` with an ID embedding (the last row is for IDs never
        seen in training), so valid indices are ``0 .. len(ids)``; None without.
    fingerprint : bytes
        :func:`fingerprint` of the net: a session's state can only be restored
        into a session of a model with the same fingerprint.
    f_infer : compiled ``f_infer(input_1bj, time_1b, id_1b) -> output_1bK`` (K = output_dim)
    mode : str
        Its compile mode (a joint function of several models,
        :mod:`sophia.serving.joint`, compiles their graphs in the same one).

    Raises
    ------
    ModelLoadError
        For a bidirectional net (it cannot run frame by frame).
    """

    def __init__(self, net: Net, ids, mode: str = MODE):
        o = net.options
        if o.bidirectional:
            raise ModelLoadError(NOT_CAUSAL)
        self.net, self.mode = net, mode
        self.input_dim, self.target_dim, self.vocab_size = o.input_dim, o.target_dim, o.vocab_size
        self.channels = output_layout.num_channels(o)
        self.output_dim = o.target_dim * self.channels
        self.layout = ",".join([o.output_activation] + (output_layout.channel_names(o)
                                                        if self.channels > 1 else []))
        self.num_ids = len(ids) + 1 if o.learn_id_embedding else None
        self.state_widths = net.state_widths()
        self.fingerprint = fingerprint(net, ids)
        self.f_infer, v_states = net.compile_infer(window_size=1, mode=mode, unroll=True)
        self.f_infer.trust_input = True  # sessions pass exact float32/int32 buffers
        # The function reads and writes the states through these storage cells.
        self._cells = [v.container.storage for v in v_states]
        # With allow_gc the function hands back fresh arrays on every call, so the
        # states it leaves in the cells belong to the caller; otherwise copy them.
        self._copy_states = not getattr(self.f_infer.vm, "allow_gc", False)
        self._lock = threading.Lock()

    def new_session(self, id_indices) -> "ModelSession":
        """A session of ``len(id_indices)`` streams, all at their initial state.

        Raises ValueError for an index outside ``[0, num_ids)`` when the model
        has an ID embedding; the indices are ignored otherwise.
        """
        if len(id_indices) < 1:
            raise ValueError("a session needs at least one stream")
        if self.num_ids is None:
            return ModelSession(self, [0] * len(id_indices))
        bad = [i for i in id_indices if not 0 <= i < self.num_ids]
        if bad:
            raise ValueError(f"ID index {bad[0]} is outside [0, {self.num_ids})")
        return ModelSession(self, id_indices)

    def run(self, states, input_1bj, time_1b, id_1b):
        """One frame from ``states`` (a list of [B][w] arrays, replaced in place).

        Returns output [1][B][k]. Side effect: ``states[n]`` become the states
        after the frame (the old arrays may have been overwritten).
        """
        with self._lock:
            for cell, state in zip(self._cells, states):
                cell[0] = state
            output_1bk = self.f_infer(input_1bj, time_1b, id_1b)
            for n, cell in enumerate(self._cells):
                states[n] = cell[0].copy() if self._copy_states else cell[0]
                cell[0] = None
        return output_1bk


    def run_sessions(self, sessions, frames) -> list:
        """One ``f_infer`` call for several sessions of this model: their states and
        prepared frames (:meth:`ModelSession.prepare`) gathered along the batch axis,
        stepped together, and scattered back.

        Returns each session's output [B_s][k] (views of one array). Side effect: every
        session's states (copies of their rows: a compiled function may reuse a state's
        buffer) and counters advance, as :meth:`ModelSession.step` does.
        Each stream's arithmetic is its own (no operation mixes streams), so outputs
        equal the sessions' own steps up to the last bits of the matrix products,
        whose BLAS kernels may differ with the batch size (``tests/test_batching.py``).
        """
        sizes = np.cumsum([0] + [s.num_streams for s in sessions])
        ports = [np.concatenate([f[n] for f in frames], axis=1) for n in range(3)]
        states = [np.concatenate([s.states[n] for s in sessions]) for n in range(len(self.state_widths))]
        output_1bk = self.run(states, *ports)
        outputs = []
        for s, lo, hi in zip(sessions, sizes[:-1], sizes[1:]):
            s.states = [state[lo:hi].copy() for state in states]
            s.count_b += 1
            outputs.append(output_1bk[0, lo:hi])
        return outputs


class ModelSession:
    """One client's B streams of a :class:`Model`.

    Time signal of a stream's frame: its frame counter (0 at the first frame
    after the handshake or a reset); with timestamps, the timestamp minus the
    stream's first timestamp since then, so that frame is 0 and starts from the
    initial state. A stream that got plain steps before its first timestamp
    continues its counter's clock: the first timestamp is taken as ``timestamp -
    counter``. As in training, a frame whose time signal is ≤ 0 (a timestamp not
    after the first one) restarts the stream.

    Attributes
    ----------
    model : Model
    num_streams : int
    states : list of ndarray
        The stored states, float32 [B][width of layer state n]; new arrays at
        each frame (the compiled function may write into the old ones).
    count_b : ndarray of int64, shape [B]
        Frames since the handshake or the stream's last reset.
    id_1b : ndarray of int32, shape [1][B]
        The streams' ID indices (zeros without an ID embedding).
    """

    def __init__(self, model: Model, id_indices):
        num_streams = len(id_indices)
        self.model = model
        self.num_streams = num_streams
        self.states = [np.zeros((num_streams, w), DTYPE) for w in model.state_widths]
        self.count_b = np.zeros(num_streams, np.int64)
        self.first_time_b = np.full(num_streams, np.nan)
        self._first_unknown = True  # some stream has no first timestamp yet
        self._stamps_b = np.zeros(num_streams)
        self._input_1bj = np.zeros((1, num_streams, model.input_dim), DTYPE)
        self._time_1b = np.zeros((1, num_streams), DTYPE)
        self.id_1b = np.asarray(id_indices, np.int32).reshape(1, num_streams)

    def step(self, input_bj, timestamps_b=None) -> np.ndarray:
        """Advance every stream by one frame.

        Parameters
        ----------
        input_bj : array_like, shape [B][input_dim]
        timestamps_b : array_like, shape [B], optional

        Returns
        -------
        ndarray of float32, shape [B][output_dim]
            A fresh array (``output_dim = target_dim × channels``, channel-major). Side effect: states and counters advance.
        """
        output_1bk = self.model.run(self.states, *self.prepare(input_bj, timestamps_b))
        self.count_b += 1
        return output_1bk[0]

    def prepare(self, input_bj, timestamps_b=None):
        """The next frame's ports ``(input_1bj, time_1b, id_1b)`` (the session's buffers,
        valid until its next frame), for :meth:`step` or :meth:`Model.run_sessions`.

        Raises ValueError for a wrong shape, or with token inputs a value that is not
        an integer in ``[0, vocab_size)``. Side effect: a stream's first timestamp
        is recorded at its first timestamped frame.
        """
        input_bj = np.asarray(input_bj)
        if input_bj.shape != self._input_1bj.shape[1:]:
            raise ValueError(f"input shape {input_bj.shape}, expected {self._input_1bj.shape[1:]}")
        if self.model.vocab_size:
            check_tokens(input_bj[None], [self.model.vocab_size])
        self._input_1bj[0] = input_bj
        return self._input_1bj, self.time_signal(timestamps_b), self.id_1b

    def time_signal(self, timestamps_b=None) -> np.ndarray:
        """The next frame's time signal, float32 [1][B] (the session's buffer, valid
        until its next frame); see the class docstring.

        Raises ValueError for timestamps of a wrong shape. Side effect: a stream's
        first timestamp is recorded at its first timestamped frame.
        """
        if timestamps_b is None:
            self._time_1b[0] = self.count_b
        else:
            self._time_1b[0] = self._times_since_first(timestamps_b)
        return self._time_1b

    def _times_since_first(self, timestamps_b) -> np.ndarray:
        if np.shape(timestamps_b) != self._stamps_b.shape:
            raise ValueError(f"timestamps shape {np.shape(timestamps_b)}, "
                             f"expected ({self.num_streams},)")
        stamps_b = self._stamps_b
        stamps_b[:] = timestamps_b
        if self._first_unknown:
            unknown_b = np.isnan(self.first_time_b)
            self.first_time_b[unknown_b] = stamps_b[unknown_b] - self.count_b[unknown_b]
            self._first_unknown = False
        return np.subtract(stamps_b, self.first_time_b, out=stamps_b)

    def reset(self, streams) -> None:
        """Those streams restart from their initial state at their next frame.

        Raises ValueError for a stream outside ``[0, B)``.
        """
        streams = list(streams)
        for s in streams:
            if not 0 <= s < self.num_streams:
                raise ValueError(f"stream {s} is outside [0, {self.num_streams})")
        self.count_b[streams] = 0
        self.first_time_b[streams] = np.nan
        self._first_unknown = True

    def state(self) -> dict:
        """Copies of everything the next frames depend on besides the inputs.

        Returns
        -------
        dict of str to ndarray
            ``state{n}_bi``: float32 [B][width of layer state n], the stored states;
            ``count_b``: int64 [B], frames since the handshake or the stream's last
            reset; ``first_time_b``: float64 [B], each stream's first timestamp
            (NaN while unknown). The session is unchanged.
        """
        arrays = {f"state{n}_bi": np.array(v, DTYPE) for n, v in enumerate(self.states)}
        arrays["count_b"] = self.count_b.copy()
        arrays["first_time_b"] = self.first_time_b.copy()
        return arrays

    def set_state(self, arrays) -> None:
        """Continue from ``arrays``, as :meth:`state` returned them (the same
        names, shapes and dtypes); the arrays are copied.

        Raises ValueError, naming what was expected, for anything else; the
        session is then unchanged.
        """
        expected = self.state()
        got = {name: (np.asarray(a).dtype, np.shape(a)) for name, a in arrays.items()}
        want = {name: (a.dtype, a.shape) for name, a in expected.items()}
        if got != want:
            raise ValueError(f"state arrays {_layout(got)}, expected {_layout(want)}")
        self.states = [np.array(arrays[f"state{n}_bi"], DTYPE) for n in range(len(self.states))]
        self.count_b = np.array(arrays["count_b"], np.int64)
        self.first_time_b = np.array(arrays["first_time_b"], np.float64)
        self._first_unknown = True  # recomputed from first_time_b at the next timestamp


def _layout(arrays) -> str:
    return ", ".join(f"{name} {dtype} {list(shape)}" for name, (dtype, shape) in arrays.items())

