"""``sophia-data``: command-line tools for Sophia datasets.

``sophia-data check DIR [--input_dim N] [--target_dim N]`` checks every split
of the dataset in DIR (see :mod:`sophia.data.dataset`) and prints a
summary, or every problem found and exits with status 1.

Example
-------
>>> main(["check", "data/toy"])                  # doctest: +SKIP
data/toy: input_dim 3, target_dim 1, no timestamps, 4 sequence IDs in train
  train: 8 sequences, 4096 frames
  dev: 2 sequences, 1024 frames
0
"""
from __future__ import annotations

import argparse
import sys

from sophia.data.dataset import DatasetError, check_dataset


def _dim(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = infer), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophia-data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check every split of a dataset")
    check.add_argument("directory", help="dataset directory (holds train.list, dev.list)")
    check.add_argument("--input_dim", type=_dim, default=0, help="input width; 0 = infer")
    check.add_argument("--target_dim", type=_dim, default=0, help="target width; 0 = infer")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sophia-data``; return the exit status (0 ok, 1 bad data).

    Side effects: prints the summary to stdout, or the problems to stderr.
    """
    args = _parser().parse_args(argv)
    try:
        summary = check_dataset(args.directory, args.input_dim, args.target_dim)
    except DatasetError as e:
        print(f"{args.directory}: {len(e.problems)} problem(s):", file=sys.stderr)
        print(e, file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
