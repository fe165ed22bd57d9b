"""Command line of training: ``python train.py --help``.

Options come from three layers, later ones winning: the ``OPTIONS`` block of
``train.py`` (every option with its default), a TOML config of overrides
(``--config configs/NAME.toml``: flat ``name = value`` lines) and
``--set name=value`` (repeatable). Unknown names and wrong types are errors
(exit status 2) that list the valid names. With ``--load_from WORKSPACE`` the
architecture is the loaded model's: a config or ``--set`` value of a model
option that differs from it is an error listing the differences; training
options may change.

Usage::

    python train.py --data_dir DATA --save_to WS [--config configs/adding.toml] [--set k=v ...]
    python train.py --load_from WS [--save_to WS2] [--set lr_init_val=1e-4]
    python train.py --check --data_dir DATA      # validate every file, then exit
    python train.py --demo                       # small adding problem, end to end

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
                            split_overrides)
from sophia.training import run_state as rs
from sophia.data.dataset import DatasetError, check_dataset
from sophia.training.workspace import Workspace, WorkspaceError

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
    p.add_argument("--load_from", help="workspace whose best parameters (and architecture) to start from")
    p.add_argument("--seed", type=int, help="seed of initialisation and shuffling (default 0, "
                   "or the loaded run's)")
    p.add_argument("--config", help="TOML file of option overrides (name = value)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one option (repeatable; wins over --config)")
    p.add_argument("--check", action="store_true", help="check the dataset fully and exit")
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


def merge_options(defaults: Mapping[str, Any], explicit: Mapping[str, Any],
                  loaded: ModelOptions | None = None) -> tuple[ModelOptions, TrainOptions]:
    """The run's options: ``defaults`` (the OPTIONS block), then ``explicit``
    (config, then --set). With a ``loaded`` architecture, that is the model
    options, and an explicit model override that differs is an OptionError."""
    base_model, base_train = split_overrides(defaults)
    model_overrides, train_overrides = split_overrides(explicit)
    train = apply_overrides(apply_overrides(TrainOptions(), base_train), train_overrides)
    if loaded is None:
        return apply_overrides(apply_overrides(ModelOptions(), base_model), model_overrides), train
    differences = rs.model_differences(loaded, model_overrides)
    if differences:
        raise OptionError("--load_from: the loaded model's architecture differs from the requested "
                          "options (drop these overrides or train a new model): " + "; ".join(differences))
    return loaded, train


def main(argv: list[str] | None = None, options: Mapping[str, Any] | None = None) -> int:
    """Run the command line; return the exit status.

    ``options`` is the flat ``{name: value}`` block of defaults (train.py's OPTIONS).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.demo:
            _demo_defaults(args)
        if args.check:
            return _check(args, parser)
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


def _train(args, defaults: dict, parser) -> int:
    from sophia.training.trainer import Trainer      # PyTensor only when training

    sources, explicit = ["OPTIONS block"], {}
    if args.config:
        explicit.update(read_config(args.config))
        sources.append(str(args.config))
    explicit.update(parse_sets(args.set))
    sources += [f"--set {s}" for s in args.set]
    loaded = None
    if args.load_from:
        loaded = rs.load_run_options(Workspace(args.load_from, create=False))
        args.data_dir = args.data_dir or loaded.data_dir
        args.save_to = args.save_to or args.load_from
        args.seed = loaded.seed if args.seed is None else args.seed
        sources.append(f"architecture of {args.load_from}")
    if not args.data_dir or not args.save_to:
        parser.error("--data_dir and --save_to are needed (or --load_from, or --demo)")
    model, train = merge_options(defaults, explicit, loaded.model if loaded else None)
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
