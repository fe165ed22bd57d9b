"""The fused windows' batch rows in blocks side by side, against one block, in one process.

The fused Ops (``sophia/graph/engines/fused.py``, ``fused_options.py``) run
their streams in blocks of batch rows, one block per core, each block the whole frame
loop of its streams with its products on one BLAS thread
(``sophia/graph/engines/window.py``, ``by_rows``). This trains the reference model
(``train_speed.py``'s MODEL) with each option set and times ``f_train_step`` with the
blocks and with every window as one block (its products on BLAS's threads, its cell
kernels on one), alternating in rounds, so that both see the same machine. It prints
the median frames/s of each and their ratio, per round too. It prints figures; it is
not a test.

Example
-------
    python bench/row_blocks.py                                   # every option set the Ops run
    python bench/row_blocks.py --option_sets layer_norm --rounds 9
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sophia  # noqa: E402,F401  first: it sets OpenBLAS's environment before numpy loads
import numpy as np  # noqa: E402

from sophia.graph.engines import window  # noqa: E402
from train_speed import MODEL, OPTION_SETS, _cpu_model, _windows  # noqa: E402

SETS = "peephole,layer_norm,learn_clock_params,layer_norm+peephole+clock,gru,gru+layer_norm"


def _one_block(run, batch, width, totals=()):
    """``window.by_rows`` with every window as one block."""
    run(0, batch, *totals)


def measure(name: str, rounds: int, calls: int) -> tuple:
    """(frames/s as one block, with the blocks) per round, for option set ``name``."""
    from sophia.graph.net import Net
    from sophia.options import ModelOptions, TrainOptions, with_output_activation
    from sophia.training.memory import keep_freed_memory

    keep_freed_memory()                   # as the trainer does
    m = MODEL
    options = TrainOptions(batch_size=m["batch"], window_size=m["window"], step_size=m["step"], force_type="adam")
    model = ModelOptions(**{**dict(input_dim=m["input_dim"], target_dim=m["target_dim"], unit_type="lstm",
                                   net_width=m["width"], net_depth=m["depth"]), **OPTION_SETS[name]})
    f_train_step, _, _ = Net(with_output_activation(model, options.loss_type), dtype="float32").compile_train_step(options)
    windows = _windows(np.random.default_rng(0), 4)
    ids = np.zeros((m["window"], m["batch"]), "int32")

    def call(n):
        x, t, y = windows[n % len(windows)]
        return float(f_train_step(x, t, ids, y, np.float32(1e-4))[0])

    blocks, speeds = window.by_rows, {_one_block: [], None: []}
    try:
        for _ in range(rounds):
            for impl in speeds:
                window.by_rows = impl or blocks
                call(0)
                start = time.perf_counter()
                for n in range(calls):
                    call(n)
                speeds[impl].append(calls * m["batch"] * m["step"] / (time.perf_counter() - start))
    finally:
        window.by_rows = blocks
    return speeds[_one_block], speeds[None]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--option_sets", default=SETS, help=f"comma-separated, of train_speed.py's (default {SETS})")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two (default 5)")
    parser.add_argument("--calls", type=int, default=4, help="f_train_step calls per timing (default 4)")
    o = parser.parse_args(argv)
    print(f"reference model, {MODEL['batch']} streams, BPTT({MODEL['window']}; {MODEL['step']}), float32, Adam; "
          f"{o.rounds} rounds of {o.calls} calls each way; cpu: {_cpu_model()}")
    print(f"{'option set':28s} {'one block f/s':>14s} {'blocks f/s':>11s} {'ratio':>6s}   per round")
    for name in o.option_sets.split(","):
        one, split = measure(name, o.rounds, o.calls)
        ratios = " ".join(f"{b / a:.2f}" for a, b in zip(one, split))
        print(f"{name:28s} {statistics.median(one):14,.0f} {statistics.median(split):11,.0f} "
              f"{statistics.median(b / a for a, b in zip(one, split)):5.2f}x   {ratios}", flush=True)


if __name__ == "__main__":
    main()
