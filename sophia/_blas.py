"""The BLAS environment: the BLAS PyTensor's C backend links, OpenBLAS's idle threads.

:func:`configure_pytensor_blas` decides PyTensor's ``blas__ldflags`` on Linux, by
this rule:

- the user set the flag (in ``PYTENSOR_FLAGS``, or ``ldflags`` in the ``[blas]``
  section of a ``.pytensorrc`` that ``PYTENSORRC`` names, ``~/.pytensorrc`` by
  default): it is kept, whatever its value;
- the OpenBLAS development library is installed (``libopenblas.so`` in a library
  directory; Debian: ``apt-get install libopenblas-dev``): ``-lopenblas``. PyTensor
  from pip does not find it by itself, and its C backend then runs scan's matrix
  products several times slower (``bench/train_speed.py --blas-ldflags``, figures in
  ``bench/README.md``);
- another BLAS PyTensor's own search may link is there (a ``*.so`` named like
  ``blas`` or ``mkl`` in a library directory: reference BLAS, MKL in a conda
  environment): the flag is left to that search;
- no BLAS can be linked: ``blas__ldflags`` is set empty. That is what PyTensor's
  search ends with in that case, but it says so with a warning ("could not link to a
  BLAS installation") in every process. With the flag empty PyTensor warns nothing
  and runs its products (``Dot22``, ``Gemv``) as numpy's ``dot``, on the OpenBLAS
  that numpy's wheel carries. That library cannot serve PyTensor's C code: its
  symbols are renamed (``scipy_dgemm_``, not ``dgemm_``), and so are scipy's.

Elsewhere than Linux (macOS's Accelerate, conda's Windows libraries) the flag is
left to PyTensor. The flag can only be set before PyTensor is imported, so
``sophia/__init__`` calls this first; it only edits the ``PYTENSOR_FLAGS``
environment variable (which processes started afterwards inherit).

:func:`quiet_openblas_threads` shortens how long OpenBLAS's worker threads spin
after a product before they sleep (``OPENBLAS_THREAD_TIMEOUT``, 2^n cycles; OpenBLAS's
default is 2^28, ≈ 0.1 s). A spinning thread holds a core that the next call
needs: oneDNN's threads in a training step (``sophia/graph/engines/onednn.py``) and the
fused Ops' step run slower behind one (``bench/step_profile.py`` measures a step;
figures in ``bench/README.md``). It must be set before numpy loads OpenBLAS, so
``sophia/__init__`` calls it; a value the user set is kept.
"""
from __future__ import annotations

import configparser
import os
import sys
import sysconfig

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                "/usr/lib", "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                "/lib64", "/lib")


def library_dirs(environ=os.environ) -> list:
    """Where a linkable BLAS may be: the system's library directories, Python's own
    (a conda environment's ``lib``) and those in ``LIBRARY_PATH``."""
    extra = [sysconfig.get_config_var("LIBDIR"), os.path.join(sys.prefix, "lib")]
    extra += environ.get("LIBRARY_PATH", "").split(os.pathsep)
    return list(dict.fromkeys(d for d in (*LIBRARY_DIRS, *extra) if d))


def blas_libraries(environ=os.environ) -> list:
    """The names of the linkable BLAS libraries in :func:`library_dirs`: shared
    libraries (``.so``, as PyTensor's search takes them) named like ``blas`` or ``mkl``."""
    found = []
    for d in library_dirs(environ):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        found += [n for n in names if n.endswith(".so") and ("blas" in n or "mkl" in n)]
    return sorted(set(found))


def user_set_blas_ldflags(environ=os.environ) -> bool:
    """Whether the user set ``blas__ldflags``: in ``PYTENSOR_FLAGS``, or in a
    ``.pytensorrc`` PyTensor reads (True also where such a file cannot be parsed:
    PyTensor will say why, and Sophia does not guess)."""
    flags = environ.get("PYTENSOR_FLAGS", "")
    if any(kv.split("=", 1)[0].strip() == "blas__ldflags" for kv in flags.split(",")):
        return True
    files = [os.path.expanduser(p) for p in environ.get("PYTENSORRC", "~/.pytensorrc").split(os.pathsep)]
    rc = configparser.RawConfigParser()
    try:
        rc.read(files)
    except (configparser.Error, UnicodeDecodeError):
        return True
    return rc.has_option("blas", "ldflags")


def configure_pytensor_blas(environ=os.environ, find_libraries=blas_libraries, modules=sys.modules,
                            platform=sys.platform):
    """Set ``blas__ldflags`` in ``PYTENSOR_FLAGS`` by the rule of this module's
    docstring. Returns the value it set (``"-lopenblas"`` or ``""``), or None where it
    left the flag alone: the user set it, PyTensor is already imported (too late),
    another BLAS is there for PyTensor's own search, or not Linux.
    ``find_libraries(environ)`` lists the linkable BLAS libraries (see :func:`blas_libraries`)."""
    if not platform.startswith("linux") or "pytensor" in modules or user_set_blas_ldflags(environ):
        return None
    libraries = find_libraries(environ)
    if "libopenblas.so" in libraries:
        value = "-lopenblas"
    elif libraries:
        return None
    else:
        value = ""
    flags = environ.get("PYTENSOR_FLAGS", "")
    environ["PYTENSOR_FLAGS"] = ",".join(f for f in (flags, f"blas__ldflags={value}") if f)
    return value


THREAD_TIMEOUT = "20"   # 2^20 cycles, ≈ 0.3 ms


def quiet_openblas_threads(environ=os.environ) -> bool:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` unless the user did or numpy (hence OpenBLAS)
    is already loaded, where it would have no effect. Returns whether it is in force."""
    if "OPENBLAS_THREAD_TIMEOUT" in environ:
        return True
    if "numpy" in sys.modules:
        return False
    environ["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    return True
