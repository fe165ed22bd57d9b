"""GFLOP/s of the matrix products in a training step of the reference model, on this machine.

A ``f_train_step`` of ``train_speed.py``'s reference model (2-layer LSTM 256, input
44, batch 64, BPTT(128; 64)) is ≈ 40 GFLOP of matrix products, nearly all of its
time: the per-frame recurrent products inside the fused Ops and the large products
of the graph around them. This prints how fast numpy's BLAS runs each of those
shapes here — and ``torch.mm`` beside it where torch is importable — with the BLAS
that numpy loaded (threadpoolctl's report, where it is installed) and the step's
floor those rates imply. Ratios to PyTorch depend on the CPU; this says how much of
that is the BLAS. It prints figures; it is not a test.

Example
-------
    python bench/gemm_rates.py --no-torch
    .venv-bench/bin/python bench/gemm_rates.py        # torch.mm beside (bench/README.md)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_speed import MODEL  # noqa: E402  (the benchmark's reference model)


def step_products(m=MODEL):
    """The matrix products of one training step of the stacked LSTM ``m``: a list of
    (M, K, N, count per step, what it is)."""
    rows, frames, width, gates = m["batch"] * m["window"], m["window"], m["width"], 4 * m["width"]
    batch, inputs, upper = m["batch"], m["input_dim"], m["depth"] - 1
    return [
        (batch, width, gates, m["depth"] * frames, "forward recurrent product, per frame"),
        (batch, gates, width, m["depth"] * frames, "backward recurrent product, per frame"),
        (rows, inputs, gates, 1, "layer 1 input product"),
        (rows, width, gates, upper, "upper layers' input products"),
        (rows, gates, width, upper, "upper layers' input gradients"),
        (width, rows, gates, upper + m["depth"], "upper layers' input and all recurrent weight gradients"),
        (inputs, rows, gates, 1, "layer 1 input weight gradient"),
    ]


def _best_seconds(call, min_flop, flop, repeats):
    """The best time of one ``call`` over ``repeats`` runs of enough calls for ``min_flop``."""
    calls = max(1, int(min_flop // flop))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _blas_report():
    """numpy's BLAS as threadpoolctl sees it, or a note that it is not installed."""
    if importlib.util.find_spec("threadpoolctl") is None:
        return "BLAS: (install threadpoolctl to name it)"
    from threadpoolctl import threadpool_info

    blas = [f"{i['internal_api']} {i.get('version')} {i.get('architecture')} kernels, {i['num_threads']} threads"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return "BLAS: " + ("; ".join(blas) or "none found")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per shape; the best is kept (15)")
    parser.add_argument("--no-torch", action="store_true", help="skip torch.mm even where importable")
    o = parser.parse_args(argv)
    torch = None
    if not o.no_torch and importlib.util.find_spec("torch") is not None:
        import torch
    print(_blas_report())
    print(f"{'M x K x N':>18} {'per step':>9} {'numpy GFLOP/s':>14} {'torch.mm':>9}   product")
    rng = np.random.default_rng(0)
    floor = 0.0
    shapes = step_products()
    for m, k, n, per_step, what in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        flop = 2.0 * m * k * n
        seconds = _best_seconds(lambda: np.dot(a, b, out=out), 2e8, flop, o.repeats)
        floor += per_step * seconds
        theirs = "-"
        if torch is not None:
            ta, tb, tout = (torch.from_numpy(x) for x in (a, b, out))
            theirs = f"{flop / _best_seconds(lambda: torch.mm(ta, tb, out=tout), 2e8, flop, o.repeats) / 1e9:.0f}"
        print(f"{f'{m} x {k} x {n}':>18} {per_step:>9} {flop / seconds / 1e9:>14.0f} {theirs:>9}   {what}")
    total = sum(2.0 * m * k * n * per_step for m, k, n, per_step, _ in shapes)
    print(f"\none training step: {total / 1e9:.1f} GFLOP of products, {floor * 1e3:.0f} ms at numpy's rates "
          f"above ({MODEL['batch'] * MODEL['step'] / floor:,.0f} frames/s if nothing else took time)")


if __name__ == "__main__":
    main()
