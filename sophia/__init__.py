"""Sophia: real-time recurrent networks for regression on long, noisy streams.

Rooms of the package (one concept per module):

- ``sophia.options``  — the architecture and training options, type-checked.
- ``sophia.graph``    — symbolic graph building: initialisers, normalizations,
  layers, the Net and its compiled ``f_`` functions.
- ``sophia.optim``    — losses, optimizer forces and updates.
- ``sophia.data``     — the dataset format, its writer, the task generators and
  the ``sophia-data`` command.
- ``sophia.training`` — BPTT(h; h') iterator, annealing schedule, workspace, trainer.
- ``sophia.serving``  — ensembles of trained models, the ZeroMQ wire protocol,
  the server and a Python client.

The naming convention (``v_``/``s_``/``p_``/``f_`` prefixes, ``_tbi`` shape
suffixes) is documented in ``docs/NAMING.md``.
"""
from sophia._blas import configure_pytensor_blas, quiet_openblas_threads

__version__ = "0.3.0"

PYTENSOR_BLAS_LDFLAGS = configure_pytensor_blas()   # what it set ("-lopenblas", ""); None: left alone
OPENBLAS_THREADS_QUIET = quiet_openblas_threads()   # False where numpy was imported first
