"""Where a server's models and socket live.

- :class:`ModelLoadError` — what a model loader raises for a bad workspace.
- :func:`resolve_workspace` — map a handshake path into the models directory,
  refusing any path that leaves it.
- :func:`state_file` -- where ``--state_dir`` keeps a session's state saved at shutdown.
- :func:`refuse_live_ipc`, :func:`remove_socket_file` — an ipc endpoint's socket
  file: never take over one a live server answers on; remove ours at shutdown.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from sophia.serving.protocol import ProtocolError

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A workspace that cannot be loaded (missing, corrupt, incompatible)."""


def resolve_workspace(models_dir, workspace: str) -> Path:
    """Resolve a handshake path inside ``models_dir``.

    Parameters
    ----------
    models_dir : str or Path
        The directory that holds every servable workspace.
    workspace : str
        A path relative to ``models_dir``, or an absolute path inside it.

    Returns
    -------
    Path
        The real path (symlinks followed).

    Raises
    ------
    ProtocolError
        If the real path is outside ``models_dir`` (``..``, an absolute path
        elsewhere, a symlink pointing out) or is not a valid path.
    """
    root = Path(models_dir).resolve()
    try:
        path = (root / workspace).resolve()
    except (OSError, ValueError, RuntimeError):
        raise ProtocolError(f"workspace {workspace!r} is not a valid path") from None
    if not path.is_relative_to(root):
        raise ProtocolError(f"workspace {workspace!r} is outside the models directory")
    return path


def state_file(state_dir, session_id: str) -> Path:
    """``state_dir/<session_id>.state``; ``session_id`` must already be checked
    (:func:`sophia.serving.protocol.parse_session_id`: hex digits, no path)."""
    return Path(state_dir) / f"{session_id}.state"


def refuse_live_ipc(endpoint: str) -> None:
    """libzmq silently takes over an ipc path: refuse one a server still answers on."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return
    path = endpoint[len("ipc://"):]
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # a stale file: libzmq replaces it
    raise OSError(f"{endpoint} is in use by another server")


def remove_socket_file(path: str) -> None:
    """Delete a server's ipc socket file at shutdown (a warning, never an error)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
