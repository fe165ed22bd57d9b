"""Train a Sophia recurrent net: ``python train.py --help``.

Edit the OPTIONS block below to change the runs this script launches: it holds
overrides only. Every option, its default and its meaning is in
``docs/OPTIONS.md`` (generated from :mod:`sophia.options`, the one source of
defaults; ``python train.py --list_options`` prints them). A TOML config
(``--config``) and ``--set name=value`` override this block in turn.

Examples::

    python train.py --demo
    sophia-data make adding --out data/adding
    python train.py --data_dir data/adding --save_to workspaces/adding --config configs/adding.toml
    python train.py --resume workspaces/adding        # continue a stopped or killed run

The logic lives in :mod:`sophia.training.cli`; this script only holds the block.
"""
import sys

from sophia.training.cli import main

OPTIONS = dict(
    # name=value overrides of sophia/options.py's defaults, e.g.
    # unit_type="gru", net_width=128, lr_init_val=3e-4,
)

if __name__ == "__main__":
    sys.exit(main(options=OPTIONS))
