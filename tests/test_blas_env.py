"""sophia's import sets OpenBLAS's thread timeout before numpy loads it (sophia/_blas.py)."""
import os
import subprocess
import sys

import pytest

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
