"""Sophia's data room: the dataset format, its writer and the task generators.

- :mod:`sophia.data.dataset` — the on-disk format read back: :class:`Dataset`
  (one split, memory-mapped), :func:`check_dataset`, :class:`DatasetError`.
- :mod:`sophia.data.writer`  — :class:`DatasetWriter`, one sequence at a time.
- :mod:`sophia.data.tasks`   — the task generators, by name (``TASKS``).
- :mod:`sophia.data.make`    — :func:`make_dataset`: a task's dataset, written.
- :mod:`sophia.data.cli`     — the ``sophia-data`` command (``make``, ``check``),
  also ``python -m sophia.data``.

Nothing here imports PyTensor.
"""
