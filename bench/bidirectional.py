"""Bidirectional against unidirectional layers where labels need the future, and where not.

The task is ``sophia-data make lookahead``: every frame holds a random symbol of
v = 4 and is labelled with the symbol ``shift`` frames away. With ``--shift 3``
the label lies in the future, which a causal net cannot see (chance: 1/4 right);
with ``--shift -3`` it lies in the past, which both nets can remember. For each
shift, one LSTM layer of each kind is trained with ``xent`` on the same data and
options (whole sequences in each window: ``step_size = window_size`` = the
longest sequence), then ``sophia-eval`` runs it over the test split (the
unidirectional net frame by frame through the serving step, the bidirectional
one over whole sequences) and the share of labelled test frames whose argmax is
the label is printed, with the best dev loss (nats per frame; ln 4 = 1.386 is
the prior's entropy) and the frames trained.

Example
-------
    python bench/bidirectional.py                      # both shifts, seed 0
    python bench/bidirectional.py --shift 3 --seed 1 --epochs 12
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sophia.data.dataset import Dataset  # noqa: E402
from sophia.data.make import make_dataset  # noqa: E402
from sophia.evaluation.evaluate import evaluate  # noqa: E402
from sophia.options import ModelOptions, TrainOptions  # noqa: E402
from sophia.training.trainer import Trainer  # noqa: E402
from sophia.workspace import Workspace  # noqa: E402

import numpy as np  # noqa: E402  (after sophia: sophia/_blas.py)

SYMBOLS = 4
T = 12                     # sequences last 12 to 18 frames
WINDOW = T + T // 2        # the longest sequence: every window holds whole sequences


def test_accuracy(workspace: str, data_dir: str, out: str) -> float:
    """Share of the test split's labelled frames whose argmax output is the label,
    from the outputs ``sophia-eval`` writes."""
    evaluate(workspace, data_dir, "test", baselines=(), out=out)
    test = Dataset.open(data_dir, "test", SYMBOLS, SYMBOLS)
    right = judged = 0
    for i, seq in enumerate(test.sequences):
        output_tk = np.fromfile(os.path.join(out, seq.path + ".output"), "<f4").reshape(seq.length, -1)
        target_tk = np.asarray(test.target(i))
        labelled = ~np.isnan(target_tk).all(axis=1)
        right += int((output_tk.argmax(1) == target_tk.argmax(1))[labelled].sum())
        judged += int(labelled.sum())
    return right / judged


def train_one(data_dir: str, workspace: str, bidirectional: bool, seed: int, epochs: int,
              width: int) -> dict:
    """Train one net; return its best dev loss, frames trained and test accuracy."""
    trainer = Trainer(ModelOptions(input_dim=SYMBOLS, target_dim=SYMBOLS, net_width=width, net_depth=1,
                                   bidirectional=bidirectional),
                      TrainOptions(loss_type="xent", batch_size=8, window_size=WINDOW, step_size=WINDOW,
                                   frames_per_epoch=3000, max_epochs=epochs, lr_init_val=0.02,
                                   target_dev_loss=0.01, compile_mode="FAST_COMPILE"),
                      data_dir, workspace, seed=seed, out=io.StringIO(), progress=io.StringIO())
    result = trainer.run()
    frames = sum(r.get("frames") or 0 for r in Workspace(workspace, create=False).read_metrics())
    return {"dev_loss": result.best_dev_loss, "frames": frames,
            "test_accuracy": test_accuracy(workspace, data_dir, os.path.join(workspace, "eval"))}


def compare(shift: int, work: str, seed: int = 0, epochs: int = 12, width: int = 16,
            counts=None) -> dict:
    """``{"uni": {...}, "bi": {...}}`` of :func:`train_one` on the lookahead task
    with ``shift``, both nets on the same data, written under ``work``."""
    data_dir = os.path.join(work, f"lookahead{shift:+d}")
    if not os.path.exists(data_dir):
        make_dataset("lookahead", data_dir, seed=seed, T=T, shift=shift, symbols=SYMBOLS,
                     counts=counts or {"train": 200, "dev": 50, "test": 100})
    return {name: train_one(data_dir, os.path.join(work, f"ws{shift:+d}-{name}"), bidir, seed,
                            epochs, width)
            for name, bidir in (("uni", False), ("bi", True))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shift", type=int, nargs="+", default=[3, -3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12, help="most epochs of 3000 frames")
    parser.add_argument("--work", help="directory for data and workspaces (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="sophia-bidir-")
    report = {}
    print(f"{'shift':>5}  {'net':<4} {'test accuracy':>13} {'dev loss':>9} {'frames':>7}")
    for shift in args.shift:
        report[shift] = compare(shift, work, args.seed, args.epochs)
        for name, r in report[shift].items():
            print(f"{shift:>+5d}  {name:<4} {r['test_accuracy']:>13.3f} {r['dev_loss']:>9.4f} {r['frames']:>7d}")
    print(f"chance accuracy {1 / SYMBOLS:.2f}, prior entropy {math.log(SYMBOLS):.3f} nats; work in {work}")
    Path(work, "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
