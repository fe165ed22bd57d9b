"""The dataset tasks, by name: ``TASKS = {'adding': adding, ...}``.

Every task module has ``SUMMARY`` (one line), ``add_arguments(parser)`` (its
own command-line options, all with defaults) and either

- ``generate(rng, n, **options)`` — a synthetic task: an iterator over `n`
  sequences ``(input_tj, target_tk, time_t or None)``; or
- ``write_dataset(writer, rng, **options)`` — a task that decides its own
  splits and sizes (``real``, ``text``, ``arithmetic``).

Its docstring, up to the ``Example`` section, describes the data; it is
copied into each dataset's ``README.txt``.

Example
-------
>>> import numpy as np
>>> from sophia.data.tasks import TASKS
>>> input_tj, target_tk, time_t = next(TASKS["adding"].generate(np.random.default_rng(0), 1))
"""
from . import (adding, arithmetic, frequency, lookahead, memorization, multiplication, permutation,
               real, temporal_order, text, xor)

TASKS = {
    "adding": adding,
    "multiplication": multiplication,
    "xor": xor,
    "temporal_order": temporal_order,
    "permutation": permutation,
    "memorization": memorization,
    "frequency": frequency,
    "lookahead": lookahead,
    "real": real,
    "text": text,
    "arithmetic": arithmetic,
}
