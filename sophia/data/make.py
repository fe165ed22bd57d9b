"""Generate a dataset in Sophia's format (see :mod:`sophia.data.writer`).

:func:`make_dataset` is the Python API; the command line on top of it is
``sophia-data make`` (:mod:`sophia.data.cli`)::

    sophia-data make TASK --out DIR [--seed S] [--train N] [--dev N] [--test N] [options]
    sophia-data make TASK --help        # the task's own options

Tasks: ``adding``, ``multiplication``, ``xor``, ``temporal_order``,
``permutation``, ``memorization``, ``frequency`` (synthetic:
``--train/--dev/--test`` give the number of sequences), ``real`` (a
series shipped with statsmodels; its sizes follow from the series) and
``text`` (characters of a UTF-8 text, token inputs, with a ``vocab.json``) and
``arithmetic`` (``3+7*2`` -> ``17`` on token inputs, with a ``vocab.json``; its
splits hold every expression once, dev and test held out from train).
Every split draws from its own stream of the seed, so the same seed and
options give identical bytes, and changing ``--dev`` leaves train unchanged.
``DIR`` must be missing or empty. The dataset root gets a ``README.txt``
saying the task, the options and the seed.

Example
-------
>>> import tempfile, os
>>> out = os.path.join(tempfile.mkdtemp(), "adding")
>>> make_dataset("adding", out, seed=1, counts={"train": 2, "dev": 1, "test": 1}, T=20)
{'train': 2, 'dev': 1, 'test': 1}
"""
from __future__ import annotations

import numpy as np

from sophia.data.tasks import TASKS
from sophia.data.tasks.common import sequence_path
from sophia.data.writer import SPLITS, DatasetWriter

DEFAULT_COUNTS = {"train": 200, "dev": 50, "test": 50}


def make_dataset(task_name, out, seed=0, counts=None, **options):
    """Write the dataset of task `task_name` to directory `out`.

    Parameters
    ----------
    task_name : str
        A key of :data:`sophia.data.tasks.TASKS`.
    out : str or os.PathLike
        Dataset directory, missing or empty.
    seed : int
        Seed of every random draw.
    counts : dict, optional
        ``{split: number of sequences}`` for synthetic tasks (default
        :data:`DEFAULT_COUNTS`); ignored by ``real``, ``text`` and ``arithmetic``.
    **options
        The task's own options.

    Returns
    -------
    dict
        ``{split: number of sequences written}``.

    Raises
    ------
    ValueError, FileExistsError, sophia.data.tasks.real.MissingPackageError
        On bad options, a non-empty `out`, or a missing data package.
    """
    task = TASKS[task_name]
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    with DatasetWriter(out) as writer:
        if hasattr(task, "generate"):
            streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
            for split, stream in zip(SPLITS, streams):
                rng = np.random.default_rng(stream)
                for index, sequence in enumerate(task.generate(rng, counts[split], **options)):
                    writer.add(split, sequence_path(split, index), *sequence)
        else:
            task.write_dataset(writer, np.random.default_rng(seed), **options)
        readme = readme_text(task_name, seed, options, writer)
        (writer.root / "README.txt").write_text(readme, encoding="utf-8")
    return writer.counts()


def readme_text(task_name, seed, options, writer):
    """Return the ``README.txt`` of a dataset (no paths, no dates: reproducible)."""
    task = TASKS[task_name]
    counts = writer.counts()
    flags = [f"--seed {seed}"]
    if hasattr(task, "generate"):
        flags += [f"--{split} {counts[split]}" for split in SPLITS]
    flags += [f"--{name.replace('_', '-')}" + ("" if isinstance(value, bool) else f" {value}")
              for name, value in options.items() if value is not False]     # a switch: its flag alone
    description = (task.__doc__ or "").split("\nExample\n")[0].strip()
    return "\n".join([
        f"Sophia dataset: {task_name} - {task.SUMMARY}",
        "",
        f"Made with: sophia-data make {task_name} --out DIR {' '.join(flags)}",
        f"Seed: {seed}",
        "Options: " + (", ".join(f"{k}={v}" for k, v in options.items()) or "none"),
        "Sequences: " + ", ".join(f"{split} {counts[split]}" for split in SPLITS),
        f"Widths: input j={writer.input_dim}, target k={writer.target_dim}",
        "",
        description,
        "",
        "Format: train.list, dev.list, test.list hold '\\n'-delimited sequence paths",
        "without extension; <path>.input is [t][j] and <path>.target is [t][k], flat",
        "little-endian float32 ('<f4'); NaN target = no target at that frame;",
        "<path>.time, where present, holds one increasing float32 timestamp per frame.",
        "",
    ])
