"""Command line of training: ``python train.py --help``.

Options come in layers, later ones winning: the defaults of
:mod:`sophia.options` (the one source; ``--list_options`` prints them), the
``OPTIONS`` block of ``train.py`` (overrides), a TOML config of overrides
(``--config configs/NAME.toml``: flat ``name = value`` lines) and
``--set name=value`` (repeatable). Unknown names and wrong types are errors
(exit status 2) that list the valid names.

- ``--load_from WORKSPACE`` is a warm start: the loaded model's architecture and
  best parameters, a fresh optimizer and annealing schedule. A config or
  ``--set`` value of a model option that differs from it is an error listing the
  differences; training options may change.
- ``--resume WORKSPACE`` continues a stopped or killed run from its last
  completed epoch, exactly (:meth:`Trainer.resume`): its saved options are the
  run's (the OPTIONS block does not apply); a config or ``--set`` may change
  training options that do not shape the saved state; a model option that
  differs is an error listing the differences.

Usage::

    python train.py --data_dir DATA --save_to WS [--config configs/adding.toml] [--set k=v ...]
    python train.py --resume WS                  # continue a stopped or killed run
    python train.py --load_from WS [--save_to WS2] [--set lr_init_val=1e-4]
    python train.py --check --data_dir DATA      # validate every file, then exit
    python train.py --demo                       # small adding problem, end to end
    python train.py --list_options               # every option, its default and meaning

Exit status: 0 done, 1 bad data or workspace, 2 bad arguments or options,
130 interrupted (the workspace keeps the last completed epoch).
"""
from __future__ import annotations

import argparse
import os
import sys
import tomllib
from importlib import resources
from typing import Any, Mapping

from sophia.options import (ModelOptions, OptionError, TrainOptions, apply_overrides,
                            markdown_table, split_overrides)
from sophia.data.dataset import DatasetError, check_dataset
from sophia.workspace import Workspace, WorkspaceError, load_run_options, model_differences

DEMO_DATA = "data/demo-adding"
DEMO_WORKSPACE = "workspaces/demo"
# The demo's overrides ship inside the package (setup.py package_data), so --demo runs
# from any directory after a plain install; this file is their one source.
DEMO_CONFIG = resources.files("sophia.training").joinpath("demo.toml")
DEMO_TASK = dict(task_name="adding", seed=0, counts={"train": 2000, "dev": 200, "test": 200}, T=20)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``train.py``."""
    p = argparse.ArgumentParser(prog="train.py", description="Train a Sophia recurrent net "
                                "with BPTT(h; h') into a workspace.")
    p.add_argument("--data_dir", help="dataset directory (default with --load_from: its data_dir)")
    p.add_argument("--save_to", help="workspace to write (default with --load_from: that workspace)")
    p.add_argument("--load_from", help="warm start: workspace whose best parameters (and architecture) "
                   "to start from, with a fresh schedule")
    p.add_argument("--resume", metavar="WORKSPACE", help="continue a stopped or killed run from its "
                   "last completed epoch, exactly")
    p.add_argument("--seed", type=int, help="seed of initialisation and shuffling (default 0, "
                   "or the loaded run's)")
    p.add_argument("--config", help="TOML file of option overrides (name = value)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one option (repeatable; wins over --config)")
    p.add_argument("--check", action="store_true", help="check the dataset fully and exit")
    p.add_argument("--list_options", action="store_true",
                   help="print every option with its type, default and meaning, and exit")
    p.add_argument("--demo", action="store_true", help=f"train on a small adding problem "
                   f"({DEMO_DATA}, generated if missing) into {DEMO_WORKSPACE} with the "
                   f"overrides of sophia/training/demo.toml")
    return p


def parse_sets(items: list[str]) -> dict[str, str]:
    """``['name=value', ...]`` as ``{name: value}`` (strings, typed later)."""
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise OptionError(f"--set expects NAME=VALUE, got {item!r}")
        result[name.strip()] = value.strip()
    return result


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The overrides of a TOML config: a flat table of ``name = value``."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as error:
        raise OptionError(f"cannot read config {path}: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise OptionError(f"{path}: not valid TOML: {error}") from error
    nested = [k for k, v in table.items() if isinstance(v, dict)]
    if nested:
        raise OptionError(f"{path}: expected flat 'name = value' lines, found tables {nested}")
    return table


def merge_options(block: Mapping[str, Any], explicit: Mapping[str, Any],
                  loaded: ModelOptions | None = None) -> tuple[ModelOptions, TrainOptions]:
    """The run's options: :mod:`sophia.options`' defaults, then ``block`` (train.py's
    OPTIONS), then ``explicit`` (config, then --set). With a ``loaded`` architecture,
    that is the model options, and an explicit model override that differs is an
    OptionError listing the differences."""
    base_model, base_train = split_overrides(block)
    model_overrides, train_overrides = split_overrides(explicit)
    train = apply_overrides(apply_overrides(TrainOptions(), base_train), train_overrides)
    if loaded is None:
        return apply_overrides(apply_overrides(ModelOptions(), base_model), model_overrides), train
    _refuse_model_changes("--load_from", loaded, model_overrides)
    return loaded, train


def _refuse_model_changes(flag: str, saved: ModelOptions, model_overrides: Mapping[str, Any]) -> None:
    differences = model_differences(saved, model_overrides)
    if differences:
        raise OptionError(f"{flag}: the saved model's architecture differs from the requested "
                          "options (drop these overrides or train a new model): " + "; ".join(differences))


def main(argv: list[str] | None = None, options: Mapping[str, Any] | None = None) -> int:
    """Run the command line; return the exit status.

    ``options`` is the flat ``{name: value}`` block of defaults (train.py's OPTIONS).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_options:
            print(markdown_table(), end="")
            return 0
        if args.demo:
            _demo_defaults(args)
        if args.check:
            return _check(args, parser)
        if args.resume:
            return _resume(args, parser)
        return _train(args, dict(options or {}), parser)
    except OptionError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except (DatasetError, WorkspaceError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the workspace holds the last completed epoch", file=sys.stderr)
        return 130


def _check(args, parser) -> int:
    if not args.data_dir:
        parser.error("--check needs --data_dir")
    print(check_dataset(args.data_dir).format())
    return 0


def _explicit_options(args) -> tuple[dict, list[str]]:
    """The config's and --set's overrides, and where they came from."""
    explicit, sources = {}, []
    if args.config:
        explicit.update(read_config(args.config))
        sources.append(str(args.config))
    explicit.update(parse_sets(args.set))
    return explicit, sources + [f"--set {s}" for s in args.set]


def _resume(args, parser) -> int:
    from sophia.training.trainer import Trainer      # PyTensor only when training

    if args.load_from or args.save_to or args.demo:
        parser.error("--resume continues a workspace in place: drop --load_from, --save_to and --demo")
    explicit, sources = _explicit_options(args)
    run = load_run_options(Workspace(args.resume, create=False))
    if args.seed is not None and args.seed != run.seed:
        raise OptionError(f"--resume: the run's seed is {run.seed}; --seed {args.seed} would not resume it")
    model_overrides, train_overrides = split_overrides(explicit)
    _refuse_model_changes("--resume", run.model, model_overrides)
    train = apply_overrides(run.train, train_overrides)
    print("options from: " + ", ".join([f"{args.resume}/options.json"] + sources))
    trainer = Trainer.resume(args.resume, train, args.data_dir)
    if trainer.finished and train == run.train:
        print(f"{args.resume}: the run has finished ({trainer.finished}); nothing to resume "
              "(change a training option with --set to go on, or start from it with --load_from)")
        return 0
    trainer.run()
    return 0


def _train(args, block: dict, parser) -> int:
    from sophia.training.trainer import Trainer      # PyTensor only when training

    explicit, sources = _explicit_options(args)
    sources = ["OPTIONS block"] + sources
    loaded = None
    if args.load_from:
        loaded = load_run_options(Workspace(args.load_from, create=False))
        args.data_dir = args.data_dir or loaded.data_dir
        args.save_to = args.save_to or args.load_from
        args.seed = loaded.seed if args.seed is None else args.seed
        sources.append(f"architecture of {args.load_from}")
    if not args.data_dir or not args.save_to:
        parser.error("--data_dir and --save_to are needed (or --load_from, or --demo)")
    model, train = merge_options(block, explicit, loaded.model if loaded else None)
    print("options from: " + ", ".join(sources))
    trainer = Trainer(model, train, args.data_dir, args.save_to, seed=args.seed or 0,
                      init_from=args.load_from)
    result = trainer.run()
    if args.demo:
        print(f"demo: best dev loss {result.best_dev_loss:.4g} vs. mean baseline "
              f"{result.baseline:.4g} ({result.best_dev_loss / result.baseline:.3g} x baseline); "
              f"model in {result.workspace}")
    return 0


def _demo_defaults(args) -> None:
    """Fill in the demo's paths and config; generate its dataset if missing."""
    args.data_dir = args.data_dir or DEMO_DATA
    args.save_to = args.save_to or DEMO_WORKSPACE
    args.config = args.config or str(DEMO_CONFIG)
    if os.path.exists(args.data_dir):
        return
    from sophia.data.make import make_dataset

    written = make_dataset(out=args.data_dir, **DEMO_TASK)
    print(f"demo: wrote {args.data_dir} (adding problem, T={DEMO_TASK['T']}): "
          + ", ".join(f"{split} {n}" for split, n in written.items()))
