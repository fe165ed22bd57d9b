"""Building the C client (clients/c) for the tests that run it.

Skipped, with the reason, only where a C compiler, make or the libzmq
headers/library are missing (Debian/Ubuntu: ``apt-get install build-essential
libzmq3-dev``).
"""
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_DIR = os.path.join(REPO, "clients", "c")
INSTALL_HINT = "install it with: apt-get install build-essential libzmq3-dev"
PROBE = "#include <zmq.h>\nint main(void) { return zmq_ctx_term(zmq_ctx_new()); }\n"
RUN_TIMEOUT = 20


def missing_toolchain(build_dir):
    """Why the C client cannot be built here, or None."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("make") is None:
        return f"no C compiler or make on PATH; {INSTALL_HINT}"
    probe = os.path.join(build_dir, "probe.c")
    with open(probe, "w") as f:
        f.write(PROBE)
    result = subprocess.run([cc, probe, "-o", probe + ".out", "-lzmq"],
                            capture_output=True, timeout=60)
    if result.returncode:
        return f"zmq.h or libzmq not found; {INSTALL_HINT}"
    return None


def build_c_client(build_dir):
    """Build ``sophia_client`` in ``build_dir`` and return its path (skips if impossible)."""
    reason = missing_toolchain(build_dir)
    if reason:
        pytest.skip(reason)
    binary = os.path.join(build_dir, "sophia_client")
    result = subprocess.run(["make", "-C", CLIENT_DIR, f"OUT={binary}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return binary
