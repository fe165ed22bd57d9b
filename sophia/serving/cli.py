"""Command line of the Sophia server (``python sophia.py`` or ``sophia-serve``).

Contents
--------
- :func:`parse_endpoint` — normalise ``--endpoint`` (bare ports bind loopback).
- :func:`default_endpoint` — an ipc socket in a directory only the user can read.
- :func:`configure_logging` — Sophia's lines at ``--log_level``, other libraries' at
  WARNING (all of them at DEBUG).
- :func:`main` — parse options, build a :class:`~sophia.serving.server.Server`,
  serve until SIGINT/SIGTERM (with ``--state_dir``, saving every open session's
  state on the way out).

Example
-------
::

    python sophia.py --models_dir ~/models --preload lstm_a lstm_b
    python sophia.py --endpoint 5555 --models_dir ~/models   # tcp://127.0.0.1:5555
    python sophia.py --models_dir ~/models --state_dir ~/sophia-states  # resumable
"""
from __future__ import annotations

import os

# One BLAS thread unless the user says otherwise: one-frame products are small, and
# OpenBLAS threads competing for the cores made B=16 steps' p99 ~50x their median
# (bench/serve_latency.py). Must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from sophia.serving.server import (DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BATCH_DELAY_US,  # noqa: E402
                                   DEFAULT_MAX_MESSAGE_BYTES, Server)

log = logging.getLogger("sophia.serve")


def parse_endpoint(text: str) -> str:
    """Normalise an endpoint: ``ipc://PATH``, ``tcp://[HOST]:PORT`` or ``PORT``.

    A missing host (``tcp://:5555``, ``5555``) means 127.0.0.1; any other
    transport is refused with ValueError.
    """
    if text.isdigit():
        return f"tcp://127.0.0.1:{text}"
    if text.startswith("tcp://"):
        host, colon, port = text[len("tcp://"):].rpartition(":")
        if not colon or not (port.isdigit() or port == "*"):
            raise ValueError(f"endpoint {text!r} lacks a port (tcp://HOST:PORT)")
        return f"tcp://{host or '127.0.0.1'}:{port}"
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return text
    raise ValueError(f"endpoint {text!r} is neither ipc://PATH nor tcp://HOST:PORT")


def default_endpoint() -> tuple[str, Path | None]:
    """An ipc endpoint in a private (mode 0700) directory.

    Returns
    -------
    endpoint : str
        ``ipc://$XDG_RUNTIME_DIR/sophia/sophia-PID.sock``, or the same in a
        fresh temporary directory when XDG_RUNTIME_DIR is unset.
    created : Path or None
        The temporary directory to remove at exit, if one was made.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        directory, created = Path(runtime) / "sophia", None
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ValueError(f"{directory} is not a directory owned by this user")
        directory.chmod(0o700)
    else:
        directory = created = Path(tempfile.mkdtemp(prefix="sophia-"))
    return f"ipc://{directory}/sophia-{os.getpid()}.sock", created


def _positive(kind):
    def convert(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return convert


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """The server's options (unknown options are an error)."""
    parser = argparse.ArgumentParser(prog="sophia", description="Serve trained "
                                     "Sophia models to ZeroMQ clients.")
    parser.add_argument("--endpoint", help="ipc://PATH, tcp://HOST:PORT or PORT "
                        "(no host: 127.0.0.1); default: ipc in a private directory")
    parser.add_argument("--models_dir", default=".", help="handshake paths are "
                        "resolved inside this directory (default: .)")
    parser.add_argument("--preload", nargs="+", default=[], metavar="WS",
                        help="workspaces to load and compile at start-up")
    parser.add_argument("--max_message_bytes", type=_positive(int),
                        default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="larger messages are dropped (default: 64 MiB)")
    parser.add_argument("--idle_timeout", type=_positive(float),
                        default=DEFAULT_IDLE_TIMEOUT,
                        help="seconds before an idle session expires (default: 600)")
    parser.add_argument("--max_batch_delay_us", type=_non_negative_int, default=DEFAULT_MAX_BATCH_DELAY_US,
                        help="batch the steps of sessions that use the same models, waiting at most "
                        f"this long for others to join (default: {DEFAULT_MAX_BATCH_DELAY_US}; 0: off)")
    parser.add_argument("--state_dir", metavar="DIR", help="on SIGTERM or SIGINT, save "
                        "every open session's state here; clients of the next server "
                        "started with it resume theirs by session id (default: none)")
    parser.add_argument("--log_level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Sophia's own log lines from this level; other libraries' "
                        "INFO and DEBUG lines only with DEBUG (default: INFO)")
    return parser.parse_args(argv)


def configure_logging(level: str, stream=None) -> None:
    """Log Sophia's own lines (loggers under ``sophia``) from ``level`` up, and other
    libraries' (PyTensor's compile chatter, say) from WARNING up, or from DEBUG up
    when ``level`` is DEBUG. Side effect: configures the root logger's handler."""
    logging.basicConfig(level="DEBUG" if level == "DEBUG" else "WARNING",
                        stream=stream or sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sophia").setLevel(level)


def load_model(path: str):
    """The real loader, imported only when a model is first needed."""
    from sophia.serving.model import load_model as load
    return load(path)


def join_models(models):
    """The real joiner (:func:`sophia.serving.joint.join`), imported only when a real
    model was loaded: until then no model is one it could join."""
    if "sophia.serving.model" not in sys.modules:
        return None
    from sophia.serving.joint import join
    return join(models)


def main(argv=None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the exit status."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    created = None
    # Until serving starts (preloading may compile for a while), SIGINT and SIGTERM interrupt
    # it. Installed explicitly: a process started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and serving below handles SIGINT explicitly too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        if not os.path.isdir(args.models_dir):
            raise ValueError(f"--models_dir {args.models_dir!r} is not a directory")
        if args.endpoint:
            endpoint = parse_endpoint(args.endpoint)
        else:
            endpoint, created = default_endpoint()
        old_umask = os.umask(0o077)  # the ipc socket file: owner only
        try:
            server = Server(endpoint, load_model, args.models_dir,
                            preload=args.preload,
                            max_message_bytes=args.max_message_bytes,
                            idle_timeout=args.idle_timeout,
                            state_dir=args.state_dir,
                            max_batch_delay_us=args.max_batch_delay_us,
                            joiner=join_models)
        finally:
            os.umask(old_umask)
    except KeyboardInterrupt:
        log.info("interrupted during start-up")
        _remove_dir(created)
        return 0
    except Exception as exc:  # bad options, a failed preload, a busy endpoint
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        _remove_dir(created)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    print(f"sophia: serving on {server.endpoint}", flush=True)
    try:
        server.serve_forever()
    finally:
        _remove_dir(created)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _remove_dir(directory: Path | None) -> None:
    if directory is not None:
        try:
            directory.rmdir()
        except OSError as exc:
            log.warning("could not remove %s: %s", directory, exc)
