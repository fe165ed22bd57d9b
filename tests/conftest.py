"""Test-wide settings.

PyTensor compiles C code for every new graph it meets, and CI always starts with
an empty compile cache: a cold C compile costs minutes, while the tests' tiny
graphs run just as well on PyTensor's Python implementations. So tests (and the
subprocesses they start, through the environment) run with ``cxx=`` (no C
compiler). Benchmarks under ``bench/`` measure the real modes. Temporary files go
under pytest's base directory (``session_tmpdir``). ``sophia`` is imported before
anything loads numpy, as ``train.py`` does, so OpenBLAS's threads are set up as in training.
"""
import os

_flags = os.environ.get("PYTENSOR_FLAGS", "")
if "cxx=" not in _flags:
    os.environ["PYTENSOR_FLAGS"] = ",".join(f for f in (_flags, "cxx=") if f)


import sophia  # noqa: E402,F401  before numpy, as train.py: OpenBLAS's environment (sophia/_blas.py)

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

from sophia.graph.engines import blocks  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory):
    """Temporary files of this session (and its subprocesses) under pytest's own
    base directory, which pytest prunes to the last three runs: PyTensor's Numba and
    JAX linkers write each generated function's source to a temporary file they never
    delete (``pytensor.link.utils.compile_function_src``), hundreds per test run."""
    path = str(tmp_path_factory.mktemp("tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", path)
        patch.setenv("TMPDIR", path)
        yield path


@pytest.fixture(params=[1, 3], ids=["one block", "three blocks"])
def row_blocks(request, monkeypatch):
    """The native kernels' rows run as one block, or as three on three threads (however many
    cores this machine has, and rows too few to be worth it otherwise)."""
    monkeypatch.setattr(blocks, "cores", lambda: request.param)
    monkeypatch.setattr(blocks, "MIN_BLOCK_ELEMENTS", 1)
    return request.param


@pytest.fixture(scope="session")
def c_client(tmp_path_factory):
    """Path of the C client built once for the session (skips where it cannot be built)."""
    from c_client_build import build_c_client
    return build_c_client(str(tmp_path_factory.mktemp("c_client")))


def _short_dir():
    path = tempfile.mkdtemp(prefix="sph-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_dir():
    """A short directory under /tmp (ipc socket paths are limited to ~107 bytes)."""
    yield from _short_dir()


@pytest.fixture(scope="module")
def short_module_dir():
    """The same, shared by a module's tests (for module-scoped servers and workspaces)."""
    yield from _short_dir()
