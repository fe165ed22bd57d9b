"""Running train.py as a user does, for the trainer, resume and HF tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def sets(**options) -> list[str]:
    """``--set name=value`` arguments for ``options``."""
    return [arg for name, value in options.items() for arg in ("--set", f"{name}={value}")]


def train_py(*argv, **popen) -> subprocess.Popen:
    """``python train.py ARGV`` in the repository root, stdout and stderr piped as text."""
    return subprocess.Popen([sys.executable, "train.py", *argv], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
