"""``sophia-data``: command-line tools for Sophia datasets (also ``python -m sophia.data``).

``sophia-data make TASK --out DIR [--seed S] [--train N] [--dev N] [--test N] [options]``
writes the dataset of a task (see :mod:`sophia.data.make`; ``sophia-data make
TASK --help`` lists the task's own options). Bad options or a non-empty DIR
exit with status 2.

``sophia-data check DIR [--input_dim N] [--target_dim N] [--loss_type L] [--vocab_size V]``
checks every split of the dataset in DIR (see :mod:`sophia.data.dataset`; with
``--vocab_size``, token inputs; a ``vocab.json`` at its root, :mod:`sophia.data.vocab`)
and prints a summary, or every problem found and exits with status 1.

Example
-------
>>> main(["make", "adding", "--out", "data/toy", "--T", "20"])       # doctest: +SKIP
wrote data/toy: train 200, dev 50, test 50
0
>>> main(["check", "data/toy"])                  # doctest: +SKIP
data/toy: input_dim 3, target_dim 1, no timestamps, 4 sequence IDs in train
  train: 8 sequences, 4096 frames
  dev: 2 sequences, 1024 frames
0
"""
from __future__ import annotations

import argparse
import sys

import os

from sophia.data.dataset import Dataset, DatasetError, check_dataset, check_targets
from sophia.data.vocab import VOCAB_FILE, read_vocab
from sophia.options import LOSS_TYPES
from sophia.data.make import DEFAULT_COUNTS, make_dataset
from sophia.data.tasks import TASKS, real
from sophia.data.writer import SPLITS


def _dim(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = infer), got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _options_parser(task) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    task.add_arguments(parser)
    return parser


def _add_make(commands) -> None:
    """The ``make`` sub-command: one sub-command per task."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="dataset directory (missing or empty)")
    common.add_argument("--seed", type=int, default=0, help="random seed; default 0")
    sizes = argparse.ArgumentParser(add_help=False)
    for split in SPLITS:
        sizes.add_argument(f"--{split}", type=_non_negative_int, default=DEFAULT_COUNTS[split],
                           help=f"number of {split} sequences; default {DEFAULT_COUNTS[split]}")
    make = commands.add_parser("make", help="generate a task's dataset",
                               description="Generate a dataset in Sophia's format.")
    tasks = make.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, task in TASKS.items():
        parents = [common, _options_parser(task)]
        if hasattr(task, "generate"):
            parents.append(sizes)
        tasks.add_parser(name, parents=parents, help=task.SUMMARY, description=task.SUMMARY)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophia-data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_make(commands)
    check = commands.add_parser("check", help="check every split of a dataset")
    check.add_argument("directory", help="dataset directory (holds train.list, dev.list)")
    check.add_argument("--input_dim", type=_dim, default=0, help="input width; 0 = infer")
    check.add_argument("--target_dim", type=_dim, default=0, help="target width; 0 = infer")
    check.add_argument("--loss_type", choices=LOSS_TYPES, default=None,
                       help="also check that every target fits this loss (xent: one-hot or "
                            "all-NaN frames; bce: 0, 1 or NaN elements)")
    check.add_argument("--vocab_size", type=_non_negative_int, default=0,
                       help="token inputs: also check that every input frame is an integer "
                            "index in [0, V) (and vocab.json's indices); 0 = real-vector inputs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sophia-data``; return the exit status (0 ok, 1 bad data, 2 bad arguments).

    Side effects: ``make`` writes the dataset and prints its sizes; ``check``
    prints the summary to stdout, or the problems to stderr.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "make":
        return _make(args, parser)
    problems = []
    vocab_file = os.path.join(args.directory, VOCAB_FILE)
    try:
        if os.path.exists(vocab_file):
            read_vocab(vocab_file, args.vocab_size)
    except DatasetError as e:
        problems += e.problems
    try:
        summary = check_dataset(args.directory, args.input_dim, args.target_dim, args.vocab_size)
        if args.loss_type:
            for split in summary.sequences:
                check_targets(Dataset.open(args.directory, split, summary.input_dim, summary.target_dim),
                              args.loss_type)
    except DatasetError as e:
        problems += e.problems
    except ValueError as e:          # token inputs with another input_dim
        parser.exit(2, f"{parser.prog} check: error: {e}\n")
    if problems:
        print(f"{args.directory}: {len(problems)} problem(s):", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(summary.format())
    return 0


def _make(args, parser) -> int:
    task = TASKS[args.task]
    options = {name: getattr(args, name) for name in vars(_options_parser(task).parse_args([]))}
    counts = {split: getattr(args, split) for split in SPLITS} if hasattr(task, "generate") else None
    try:
        written = make_dataset(args.task, args.out, args.seed, counts, **options)
    except (ValueError, FileExistsError, real.MissingPackageError) as error:
        parser.exit(2, f"{parser.prog} make {args.task}: error: {error}\n")
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n}" for split, n in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
