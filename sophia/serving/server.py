"""The Sophia plugin server: one ZeroMQ ROUTER socket, one session per client.

Contents
--------
- :class:`Server` — the socket loop and the session table.

Where the models and the ipc socket file live (models-directory confinement, a live
socket refused) is :mod:`sophia.serving.paths`.

Each REQ client gets its own session (keyed by its routing id): an
:class:`~sophia.serving.ensemble.Ensemble` of the models of its handshake, which
are loaded once per resolved path and shared by all sessions, holding that
client's stream states. This module is the transport; the composition of the
models is the ensemble's. Models load on a single background thread, so a slow
load never stalls other clients; so does the joint function of a handshake's
models (``joiner``, :mod:`sophia.serving.joint`), compiled once per list of
workspaces and shared by their sessions, which then step with one call.
The wire protocol is in :mod:`sophia.serving.protocol` and ``docs/PROTOCOL.md``.

Every session has an id (random, 32 hex digits; the ``session_id`` command). With a
``state_dir``, :meth:`Server.serve_forever` saves every open session's state there
on its way out (``<id>.state``, the blob of :mod:`sophia.serving.snapshot`, written
atomically), and a client of the next server resumes it by its id (``resume``).

Example
-------
>>> import threading
>>> server = Server("tcp://127.0.0.1:*", loader=my_load_model,   # doctest: +SKIP
...                 models_dir="models")
>>> threading.Thread(target=server.serve_forever).start()        # doctest: +SKIP
>>> server.endpoint                                              # doctest: +SKIP
'tcp://127.0.0.1:49153'
>>> server.stop()                                                # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import zmq

from sophia.atomic import atomic_write_bytes
from sophia.serving import protocol as proto
from sophia.serving import snapshot
from sophia.serving.batching import StepQueue
from sophia.serving.ensemble import Ensemble, EnsembleError
from sophia.serving.paths import (refuse_live_ipc, remove_socket_file, resolve_workspace,
                                  state_file)
from sophia.serving.protocol import ProtocolError

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # larger messages are dropped by libzmq
DEFAULT_IDLE_TIMEOUT = 600.0            # seconds without a message before expiry
POLL_INTERVAL = 0.05                    # seconds; bounds stop() and expiry latency
MAX_BATCH = 256                         # messages handled between housekeeping
DEFAULT_MAX_BATCH_DELAY_US = 500        # longest wait for more steps to batch with (0: off)
BATCH_POLL_SLEEP = 20e-6                # seconds between polls while a batch waits
MAX_JOINTS = 64                         # joint functions kept for later handshakes


class _Session:
    """One client's ensemble, its id and when it was last heard from."""

    def __init__(self, ensemble: Ensemble):
        self.ensemble = ensemble
        self.session_id = secrets.token_hex(proto.SESSION_ID_CHARS // 2)
        self.last_active = time.monotonic()


class Server:
    """Serve trained models to ZeroMQ REQ clients over one ROUTER socket.

    Parameters
    ----------
    endpoint : str
        Where to bind: ``ipc://PATH`` or ``tcp://HOST:PORT`` (``PORT`` may be
        ``*`` for an ephemeral port; read the bound one from :attr:`endpoint`).
    loader : callable
        ``loader(path: str) -> Model``; any exception it raises refuses the
        handshake that asked for the path (the server keeps running).
    models_dir : str or Path
        Handshake paths are resolved inside this directory.
    preload : sequence of str, optional
        Workspaces loaded before binding, so no handshake waits for them. A
        failure here is raised to the caller.
    max_message_bytes : int, optional
        ZMQ_MAXMSGSIZE: libzmq drops larger messages and their connection.
    idle_timeout : float, optional
        Seconds without a message after which a session expires.
    max_batch_delay_us : int, optional
        Batching across sessions (:mod:`sophia.serving.batching`): how long, in
        microseconds, the first queued step may wait for other sessions' steps to
        run with; 0 steps every request on its own, as it arrives.
    joiner : callable, optional
        ``joiner(models) -> joint or None``: one function for a handshake's models
        (:func:`sophia.serving.joint.join`), built on the loading thread once per
        list of workspaces before the handshake's ``ready``; its sessions' steps are
        then one call each (None, or an exception it raises, which is logged: each
        model steps on its own). Without it, each model steps on its own.
    state_dir : str or Path, optional
        Where :meth:`serve_forever` saves every open session's state when it
        returns, and where ``resume`` finds them; created (mode 0700) if missing.
        Without it, nothing is saved and ``resume`` is refused.

    Attributes
    ----------
    endpoint : str
        The bound endpoint.

    Notes
    -----
    Construct it in one thread, then run :meth:`serve_forever` in any single
    thread; :meth:`stop` may be called from anywhere (e.g. a signal handler).
    """

    def __init__(self, endpoint: str, loader, models_dir, *, preload=(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, state_dir=None,
                 max_batch_delay_us: int = DEFAULT_MAX_BATCH_DELAY_US, joiner=None):
        if max_message_bytes < 1 or idle_timeout <= 0:
            raise ValueError("max_message_bytes and idle_timeout must be positive")
        if max_batch_delay_us < 0:
            raise ValueError(f"max_batch_delay_us must be >= 0, got {max_batch_delay_us}")
        self._batch_delay = max_batch_delay_us / 1e6
        self._steps = StepQueue() if max_batch_delay_us > 0 else None
        self._state_dir = None if state_dir is None else Path(state_dir)
        if self._state_dir is not None:
            os.makedirs(self._state_dir, mode=0o700, exist_ok=True)
        self._loader = loader
        self._joiner = joiner
        self._models_dir = Path(models_dir).resolve()
        self._max_message_bytes = int(max_message_bytes)
        self._idle_timeout = float(idle_timeout)
        self._models = {}     # resolved Path -> Model
        self._loading = {}    # resolved Path -> Future
        self._joints = {}     # tuple of resolved Paths -> Future of a joint function or None
        self._sessions = {}   # routing id -> _Session
        self._pending = {}    # routing id -> (Handshake, [Future], Future or None)
        self._stop = threading.Event()
        self._closed = False
        for workspace in preload:
            self._preload(workspace)
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="sophia-load")
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            refuse_live_ipc(endpoint)
            self._socket.bind(endpoint)
            self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception:
            self.close()
            raise
        log.info("serving on %s (models_dir %s)", self.endpoint, self._models_dir)

    @property
    def num_sessions(self) -> int:
        """Number of open sessions (handshakes still loading not counted)."""
        return len(self._sessions)

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return within about POLL_INTERVAL."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`.

        On the way out, with a ``state_dir``, every open session's state is saved
        there (one failing session is logged and skipped), then the socket and
        context are closed.
        """
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(POLL_INTERVAL * 1000):
                    self._drain()
                self._finish_loads()
                self._expire_idle()
        finally:
            try:
                self._save_states()
            finally:
                self.close()

    def close(self) -> None:
        """Close the socket and context and remove the ipc socket file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "_executor"):
            self._executor.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "_context"):
            self._socket.close(linger=0)
            self._context.term()
        endpoint = getattr(self, "endpoint", "")
        if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
            remove_socket_file(endpoint[len("ipc://"):])
        log.info("server closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # --- the loop -------------------------------------------------------------

    def _drain(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if not self._wait_for_steps():
                    break
                continue
            self._handle(parts)
        if self._steps:
            self._run_steps()

    def _wait_for_steps(self) -> bool:
        """With steps queued that other sessions could join, wait for a message until
        the batch delay since the first one has passed; True if one arrived."""
        steps = self._steps
        if not steps or steps.complete({rid: s.ensemble for rid, s in self._sessions.items()}):
            return False
        while time.monotonic() - steps.started < self._batch_delay:
            if self._socket.poll(0, zmq.POLLIN):
                return True
            time.sleep(BATCH_POLL_SLEEP)    # a spinning wait would take the core a client needs
        return False

    def _run_steps(self) -> None:
        for rid, result in self._steps.run():
            if isinstance(result, Exception):
                self._sessions.pop(rid, None)
                message = f"server error, session closed: {type(result).__name__}: {result}"
                log.error("client %s: %s", rid.hex(), proto.one_line(message))
                self._send(rid, [proto.format_error(message)])
            else:
                self._send(rid, [proto.format_frames(result)])

    def _handle(self, parts) -> None:
        if len(parts) < 3 or parts[1] != b"":
            log.warning("dropped a %d-part message without a REQ envelope", len(parts))
            return
        rid, body = parts[0], parts[2:]
        try:
            reply = self._dispatch(rid, body)
        except ProtocolError as exc:
            log.warning("client %s: %s", rid.hex(), proto.one_line(exc))
            reply = [proto.format_error(str(exc))]
        except Exception as exc:  # a model or a bug: never let a client kill us
            self._sessions.pop(rid, None)
            message = f"server error, session closed: {type(exc).__name__}: {exc}"
            log.error("client %s: %s", rid.hex(), proto.one_line(message))
            reply = [proto.format_error(message)]
        if reply is not None:
            self._send(rid, reply)

    def _send(self, rid: bytes, reply) -> None:
        try:
            self._socket.send_multipart([rid, b"", *reply], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            dropped = self._sessions.pop(rid, None) is not None
            log.warning("client %s: reply not delivered (%s)%s", rid.hex(),
                        exc.strerror, "; session dropped" if dropped else "")

    def _dispatch(self, rid: bytes, body):
        """Handle one request; returns the reply parts, or None for no reply."""
        if rid in self._pending:
            raise ProtocolError("handshake still loading; wait for 'ready'")
        session = self._sessions.get(rid)
        if session is None:
            return self._on_no_session(rid, body)
        session.last_active = time.monotonic()
        if len(body) == 1 and proto.is_end_frame(body[0]):
            del self._sessions[rid]
            log.info("client %s: session ended", rid.hex())
            return None
        if len(body) == 1:
            return self._step(rid, session.ensemble, body[0])
        return self._on_command(rid, session, body)

    def _step(self, rid: bytes, ensemble: Ensemble, payload: bytes, timestamps_b=None):
        """The reply to a step request, or None when it is queued to run batched."""
        frames_nbj = proto.parse_frames(payload, ensemble.num_models, ensemble.num_streams,
                                        ensemble.input_dim)
        proto.check_tokens(frames_nbj, ensemble.vocab_sizes)
        if self._steps is not None and len(self._sessions) > 1:   # a lone session has no one to wait for
            self._steps.add(rid, ensemble, frames_nbj, timestamps_b)
            return None
        return [proto.format_frames(ensemble.step(frames_nbj, timestamps_b))]

    def _on_no_session(self, rid: bytes, body):
        if len(body) != 1:
            raise ProtocolError("no session (never started, ended or expired): "
                                "send the handshake first, as one text part")
        if proto.is_end_frame(body[0]):
            log.info("client %s: end signal without a session; ignored", rid.hex())
            return None
        try:
            handshake = proto.parse_handshake(body[0])
            paths = [resolve_workspace(self._models_dir, ws)
                     for ws in handshake.workspaces]
        except ProtocolError as exc:
            raise ProtocolError("bad handshake, no session (never started, ended or "
                                f"expired): {exc}") from None
        futures = [self._model_future(p) for p in paths]
        self._pending[rid] = (handshake, futures, self._joint_future(tuple(paths), futures))
        return None  # 'ready' or an error is sent by _finish_loads

    def _on_command(self, rid: bytes, session: _Session, body):
        command, ensemble = body[0], session.ensemble
        if command == proto.CMD_RESET and len(body) == 2:
            ensemble.reset(proto.parse_streams(body[1], ensemble.num_streams))
            return [proto.OK]
        if command == proto.CMD_STEP_T and len(body) == 3:
            timestamps_b = proto.parse_timestamps(body[1], ensemble.num_streams)
            return self._step(rid, ensemble, body[2], timestamps_b)
        if command in (proto.CMD_SESSION_ID, proto.CMD_FETCH_STATE) and len(body) == 2:
            if body[1]:
                raise ProtocolError(f"{command.decode()} takes an empty second part, "
                                    f"got {len(body[1])} bytes")
            if command == proto.CMD_SESSION_ID:
                return [session.session_id.encode("ascii")]
            return [snapshot.encode(ensemble.snapshot())]
        if command == proto.CMD_RESTORE_STATE and len(body) == 2:
            self._restore(ensemble, body[1], "bad state blob")
            return [proto.OK]
        if command == proto.CMD_RESUME and len(body) == 2:
            self._resume(session, proto.parse_session_id(body[1]))
            return [proto.OK]
        raise ProtocolError(f"unknown command {command[:32]!r} with {len(body)} parts")

    # --- state snapshots --------------------------------------------------------

    @staticmethod
    def _restore(ensemble: Ensemble, blob: bytes, what: str) -> None:
        """Restore a blob into an ensemble, or raise ProtocolError leaving it unchanged."""
        try:
            ensemble.restore(snapshot.decode(blob))
        except (ProtocolError, EnsembleError) as exc:
            raise ProtocolError(f"{what}, session unchanged: {exc}") from None

    def _resume(self, session: _Session, session_id: str) -> None:
        """Restore the state saved under ``session_id``; the session takes that id
        and the file is removed. Raises ProtocolError (session unchanged, file kept)."""
        if self._state_dir is None:
            raise ProtocolError("cannot resume: this server has no --state_dir, so no "
                                "state was saved")
        if any(s.session_id == session_id for s in self._sessions.values()):
            raise ProtocolError(f"cannot resume {session_id}: an open session has that id")
        path = state_file(self._state_dir, session_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise ProtocolError(f"cannot resume {session_id}: no state saved under that id "
                                "in --state_dir (never saved, or resumed already)") from None
        except OSError as exc:
            raise ProtocolError(f"cannot resume {session_id}: {exc.strerror}") from None
        self._restore(session.ensemble, blob, f"cannot resume {session_id}")
        session.session_id = session_id
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc.strerror)
        log.info("session %s resumed", session_id)

    def _save_states(self) -> None:
        """Save every open session's state into the state directory, if there is one."""
        if self._state_dir is None or not self._sessions:
            return
        saved = 0
        for rid, session in self._sessions.items():
            try:
                blob = snapshot.encode(session.ensemble.snapshot())
                atomic_write_bytes(state_file(self._state_dir, session.session_id), blob)
                saved += 1
            except Exception as exc:  # a broken model or a full disk: save the others
                log.error("session %s: state not saved: %s", session.session_id,
                          proto.one_line(f"{type(exc).__name__}: {exc}"))
        log.info("saved the state of %d of %d sessions in %s", saved, len(self._sessions),
                 self._state_dir)

    # --- models and sessions --------------------------------------------------

    def _preload(self, workspace: str) -> None:
        path = resolve_workspace(self._models_dir, workspace)
        start = time.monotonic()
        self._models[path] = self._loader(str(path))
        log.info("preloaded %s in %.1f s", path, time.monotonic() - start)

    def _model_future(self, path: Path) -> Future:
        if path in self._models:
            future = Future()
            future.set_result(self._models[path])
            return future
        if path not in self._loading:
            log.info("loading %s", path)
            self._loading[path] = self._executor.submit(self._loader, str(path))
        return self._loading[path]

    def _joint_future(self, paths: tuple, futures):
        """The future of the joint function of the models at ``paths`` (None without a
        joiner); submitted once, again only after it failed (a model did not load).
        The :data:`MAX_JOINTS` most recently asked for are kept (sessions keep theirs)."""
        if self._joiner is None:
            return None
        future = self._joints.pop(paths, None)
        if future is None or (future.done() and future.exception() is not None):
            future = self._executor.submit(self._join, futures)
        self._joints[paths] = future              # the most recent last
        if len(self._joints) > MAX_JOINTS:
            del self._joints[next(iter(self._joints))]
        return future

    def _join(self, futures):
        """On the loading thread: the models' joint function, or None if the joiner
        fails (logged). The model futures are done: they were submitted before, to
        the same single thread."""
        models = [f.result() for f in futures]
        start = time.monotonic()
        try:
            joint = self._joiner(models)
            if joint is not None:
                log.info("compiled the joint function of %d models in %.1f s", len(models),
                         time.monotonic() - start)
            return joint
        except Exception as exc:   # its models still serve, each on its own
            log.error("no joint function for %d models, each steps on its own: %s",
                      len(models), proto.one_line(f"{type(exc).__name__}: {exc}"))
            return None

    def _finish_loads(self) -> None:
        for path, future in list(self._loading.items()):
            if future.done():
                del self._loading[path]
                if future.exception() is None:
                    self._models[path] = future.result()
                    log.info("loaded %s", path)
        for rid, (handshake, futures, joint) in list(self._pending.items()):
            if all(f.done() for f in futures) and (joint is None or joint.done()):
                del self._pending[rid]
                try:
                    self._open_session(rid, handshake, futures, joint)
                    reply = proto.READY
                except ProtocolError as exc:
                    log.warning("client %s: %s", rid.hex(), proto.one_line(exc))
                    reply = proto.format_error(str(exc))
                except Exception as exc:  # a model that breaks its interface
                    message = (f"server error, no session: "
                               f"{type(exc).__name__}: {exc}")
                    log.error("client %s: %s", rid.hex(), proto.one_line(message))
                    reply = proto.format_error(message)
                self._send(rid, [reply])

    def _open_session(self, rid: bytes, handshake, futures, joint_future) -> None:
        models = []
        for workspace, future in zip(handshake.workspaces, futures):
            exc = future.exception()
            if exc is not None:
                raise ProtocolError(f"bad handshake, no session: cannot load "
                                    f"workspace {workspace!r}: {type(exc).__name__}: {exc}")
            models.append(future.result())
        # Before any stream state is allocated: a step must fit in one message.
        num_bytes = max(proto.frame_nbytes(len(models), handshake.num_streams, d)
                        for m in models for d in (m.input_dim, m.output_dim))
        if num_bytes > self._max_message_bytes:
            raise ProtocolError(f"bad handshake, no session: a step would be "
                                f"{num_bytes} bytes, over the server's limit of "
                                f"{self._max_message_bytes}")
        joint = None if joint_future is None else joint_future.result()
        try:
            ensemble = Ensemble(handshake.workspaces, models, handshake.id_indices, joint=joint)
        except EnsembleError as exc:
            raise ProtocolError(f"bad handshake, no session: {exc}") from None
        session = self._sessions[rid] = _Session(ensemble)
        log.info("client %s: session %s opened (%d workspaces, %d streams)", rid.hex(),
                 session.session_id, len(models), handshake.num_streams)

    def _expire_idle(self) -> None:
        deadline = time.monotonic() - self._idle_timeout
        for rid, session in list(self._sessions.items()):
            if session.last_active < deadline:
                del self._sessions[rid]
                log.info("client %s: idle over %g s, session expired", rid.hex(),
                         self._idle_timeout)
