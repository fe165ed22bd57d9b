"""sophia's import sets up the BLAS environment (sophia/_blas.py): OpenBLAS's thread
timeout before numpy loads it, and PyTensor's blas__ldflags before PyTensor reads it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sophia._blas import configure_pytensor_blas, user_set_blas_ldflags

REPORT = "import os, sophia; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), sophia.OPENBLAS_THREADS_QUIET)"


def run(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.parametrize("code, env, expected", [
    (REPORT, {}, ["20", "True"]),                                   # sophia first: set
    ("import numpy; " + REPORT, {}, ["None", "False"]),             # numpy first: too late, reported
    (REPORT, {"OPENBLAS_THREAD_TIMEOUT": "4"}, ["4", "True"]),      # the user's value is kept
])
def test_thread_timeout_is_set_only_where_it_can_act(code, env, expected):
    assert run(code, **env) == expected


# -- PyTensor's blas__ldflags ---------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
NO_RC = {"PYTENSORRC": os.devnull}          # no user .pytensorrc: the tests see only their own


def configure(libraries, **environ):
    """``configure_pytensor_blas`` before PyTensor's import, on Linux, with
    ``libraries`` as the linkable BLAS found; returns (value set, PYTENSOR_FLAGS)."""
    environ = {**NO_RC, **environ}
    value = configure_pytensor_blas(environ, find_libraries=lambda env: list(libraries), modules={},
                                    platform="linux")
    return value, environ.get("PYTENSOR_FLAGS")


@pytest.mark.parametrize("libraries, flags, expected", [
    ([], None, ("", "blas__ldflags=")),                                    # no BLAS: empty, no warning
    ([], "cxx=", ("", "cxx=,blas__ldflags=")),                              # the user's other flags kept
    (["libblas.so", "libopenblas.so"], None, ("-lopenblas", "blas__ldflags=-lopenblas")),
    (["libmkl_rt.so"], None, (None, None)),                                 # left to PyTensor's search
    ([], "blas__ldflags=-lmkl_rt", (None, "blas__ldflags=-lmkl_rt")),       # the user's value kept
    (["libopenblas.so"], "blas__ldflags=", (None, "blas__ldflags=")),       # even an empty one
])
def test_blas_ldflags_rule(libraries, flags, expected):
    environ = {} if flags is None else {"PYTENSOR_FLAGS": flags}
    assert configure(libraries, **environ) == expected


def test_blas_ldflags_of_a_pytensorrc_are_kept(tmp_path):
    rc = tmp_path / "pytensorrc"
    rc.write_text("[blas]\nldflags = -lmkl_rt\n")
    environ = {"PYTENSORRC": os.pathsep.join([os.devnull, str(rc)])}
    assert user_set_blas_ldflags(environ)
    assert configure([], **environ) == (None, None)
    rc.write_text("[global]\nfloatX = float32\n")
    assert configure([], **environ) == ("", "blas__ldflags=")


def test_blas_ldflags_left_alone_where_too_late_or_not_linux():
    environ = dict(NO_RC)
    assert configure_pytensor_blas(environ, find_libraries=lambda env: [], modules={"pytensor": None},
                                   platform="linux") is None
    assert configure_pytensor_blas(environ, find_libraries=lambda env: [], modules={},
                                   platform="darwin") is None
    assert "PYTENSOR_FLAGS" not in environ


# A tiny graph with matrix and matrix-vector products, compiled by the C backend (CVM),
# which reads blas__ldflags; the rest of the suite runs without a compiler (conftest).
COMPILE_DOT = """
import numpy as np, pytensor as th, pytensor.tensor as tt
x, W, v = tt.matrix("x"), tt.matrix("W"), tt.vector("v")
f = th.function([x, W, v], [tt.dot(x, W), tt.dot(W.T, v)], mode="CVM")
print([float(a.sum()) for a in f(np.ones((2, 3)), np.ones((3, 4)), np.ones(3))])
"""
# sophia's rule with no linkable BLAS, whatever this machine has: _blas.py loaded alone
# (importing the package would apply the machine's rule first), its finder finding nothing
NO_BLAS = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("blas_rule", {str(ROOT / "sophia" / "_blas.py")!r})
rule = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rule)
assert rule.configure_pytensor_blas(find_libraries=lambda environ: []) == ""
"""


@pytest.mark.parametrize("prelude", ["import sophia", NO_BLAS], ids=["this machine", "no BLAS"])
def test_compiling_a_product_warns_nothing_about_blas(prelude, tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTENSOR_FLAGS", "PYTHONWARNINGS")}
    environ.update(NO_RC, PYTENSOR_FLAGS=f"compiledir={tmp_path}")
    done = subprocess.run([sys.executable, "-c", prelude + "\n" + COMPILE_DOT], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[24.0, 12.0]"
    assert "could not link to a BLAS" not in done.stderr, done.stderr
