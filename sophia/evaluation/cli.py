"""``sophia-eval``: evaluate a workspace on a dataset split (also ``python -m sophia.evaluation``).

``sophia-eval WORKSPACE [WORKSPACE ...] --data_dir DIR [--split test] [--baselines mean,persistence,seasonal,ar]
[--season P] [--max_ar N] [--tolerance X] [--warmup N] [--track_step S] [--out DIR] [--plot]
[--streams B]``

Prints a table of the overall metrics and writes ``.output`` files,
``report.json`` and (``--plot``) ``predictions.png`` under ``--out``
(default ``WORKSPACE/eval/SPLIT``). Bad input is one line on stderr naming the
file or field: exit status 2 for bad options, 1 for bad files. See docs/EVALUATION.md.

Example
-------
>>> main(["runs/co2", "--data_dir", "data/co2", "--season", "52", "--plot"])  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import os
import sys

from sophia.evaluation import EvalError
from sophia.evaluation.evaluate import ALL_BASELINES, BASELINES, evaluate, format_table
from sophia.evaluation.tracking import DEFAULT_STEP, check_step


def _baselines(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline {unknown[0]!r} "
                                         f"(choose from {', '.join(ALL_BASELINES)})")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _tolerance(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _step(text: str) -> float:
    try:
        value = float(text)
        check_step(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}") from None
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophia-eval", description=__doc__.split("\n")[0])
    parser.add_argument("workspace", nargs="+", help="a training run's workspace (options.json, "
                        "params.npz); several are scored as one ensemble, their outputs combined "
                        "(sophia/evaluation/ensemble.py)")
    parser.add_argument("--data_dir", required=True, help="dataset directory (train.list, dev.list, ...)")
    parser.add_argument("--split", default="test", help="split to evaluate; default test")
    parser.add_argument("--baselines", type=_baselines, default=BASELINES,
                        help=f"comma-separated, from {','.join(ALL_BASELINES)} (default "
                             f"{','.join(BASELINES)}; '' for none; ets and arima need statsmodels)")
    parser.add_argument("--season", type=_positive_int, default=1,
                        help="season of seasonal naive and of MASE's scale, in frames; default 1")
    parser.add_argument("--max_ar", type=_positive_int, default=24,
                        help="largest AR order tried on the dev split; default 24")
    parser.add_argument("--tolerance", type=_tolerance, default=0.04,
                        help="a value is wrong when |error| > this; default 0.04")
    parser.add_argument("--warmup", type=_non_negative_int, default=0,
                        help="frames at the start of each sequence that are not scored; default 0")
    parser.add_argument("--track_step", type=_step, default=DEFAULT_STEP,
                        help="step of a probabilistic model's tracked interval, scored as "
                             "coverage_tracked (sophia/evaluation/tracking.py; 0: not tracked); "
                             f"default {DEFAULT_STEP}")
    parser.add_argument("--out", help="output directory; default WORKSPACE/eval/SPLIT (of the "
                        "first workspace; for an ensemble WORKSPACE/eval/SPLIT-ensemble)")
    parser.add_argument("--plot", action="store_true", help="also write predictions.png (matplotlib)")
    parser.add_argument("--streams", type=_positive_int, default=8,
                        help="sequences run together as streams of one session; default 8")
    return parser


def main(argv=None) -> int:
    """Run ``sophia-eval``; returns the exit status (argparse exits 2 on bad options)."""
    args = _parser().parse_args(argv)
    suffix = "-ensemble" if len(args.workspace) > 1 else ""
    out = args.out or os.path.join(args.workspace[0], "eval", args.split + suffix)
    try:
        report = evaluate(args.workspace, args.data_dir, args.split, args.baselines, args.season,
                          args.max_ar, args.tolerance, out, args.plot, args.streams,
                          warmup=args.warmup, track_step=args.track_step)
    except EvalError as error:
        print(f"sophia-eval: error: {error}", file=sys.stderr)
        return 1
    print(f"{' + '.join(args.workspace)} on {args.data_dir} {args.split}: {len(report['sequences'])} sequences")
    print(format_table(report))
    print(f"wrote {out}")
    return 0
