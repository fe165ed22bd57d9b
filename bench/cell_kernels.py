"""One frame of the fused engine's frame loop, piece by piece, at the reference sizes.

Inside a fused window (``sophia/graph/engines/window.py``) every frame runs a
recurrent product on BLAS's threads and a cell kernel on one thread, forward and
back. This times each piece alone on the reference model's frame (batch 64, width
256; ``train_speed.py``'s MODEL): the forward product ``h W_h`` [64][256]·[256][4i],
the backward one ``d W_hᵀ``, and each native cell kernel forward and backward with
the option bits an option set turns on. It shows what a unit option adds to the
plain cell and how that compares with the products; the median of ``--repeats``
timings of ``--calls`` calls each. *Warm*: the same arrays every call, in the caches,
a floor; *window*: each call on the next of ``--frames`` sets of arrays (as a window's
frame loop steps through its [T][B][..] arrays), so each call finds its arrays in
memory, not in the caches. It prints figures; it is not a test.

Example
-------
    python bench/cell_kernels.py
    OPENBLAS_NUM_THREADS=1 python bench/cell_kernels.py     # the products on one thread
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

from sophia.graph.engines import native  # noqa: E402
from train_speed import MODEL  # noqa: E402

LAYER_NORM, PEEPHOLE, CLOCK = native.LAYER_NORM, native.PEEPHOLE, native.CLOCK
# (row label, kernel, option bits): the cells an option set runs, forward then backward
CELLS = [
    ("lstm", "lstm_cell", None),
    ("lstm peephole", "lstm_options_cell", PEEPHOLE),
    ("lstm layer_norm", "lstm_options_cell", LAYER_NORM),
    ("lstm clock", "lstm_options_cell", CLOCK),
    ("lstm layer_norm+peephole+clock", "lstm_options_cell", LAYER_NORM | PEEPHOLE | CLOCK),
    ("lstm batch_norm", "lstm_bn_cell", 0),
    ("gru", "gru_cell", None),
    ("gru layer_norm", "gru_options_cell", LAYER_NORM),
    ("gru batch_norm", "gru_bn_cell", 0),
]


def _time(call, calls, repeats):
    """Median µs per call of ``call()`` over ``repeats`` runs of ``calls`` calls."""
    call()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def kernel_call(name, flags, batch, width, rng, frames=1):
    """A no-argument function calling native kernel ``name`` once on random float32
    arrays shaped as it takes them (values in (0.05, 0.95), activations' range): on
    the next of ``frames`` sets of them at each call."""
    sets = [[rng.uniform(0.05, 0.95, shape).astype(np.float64 if wide else np.float32)
             for shape, wide in native.array_shapes(name, batch, width)] for _ in range(frames)]
    addresses = [[a.ctypes.data for a in arrays] for arrays in sets]
    function = native.kernel(name, np.float32, flags or 0)
    tail = (batch, width, 1.0)
    at = [0]

    def call():
        function(*addresses[at[0]], *tail)
        at[0] = (at[0] + 1) % frames
    call.sets = sets                      # keeps them alive as long as the call
    return call


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per timing (300)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per piece, median kept (5)")
    parser.add_argument("--frames", type=int, default=MODEL["window"],
                        help=f"array sets the window column cycles through ({MODEL['window']}, a window's frames)")
    o = parser.parse_args(argv)
    if not native.available():
        raise SystemExit("the cell kernels need a C compiler ($CC, cc, gcc or clang)")
    batch, width = MODEL["batch"], MODEL["width"]
    rng = np.random.default_rng(0)
    print(f"one frame: batch {batch}, width {width}, float32; {o.calls} calls x {o.repeats} repeats, median; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'piece (us: forward, backward)':32} {'warm':>15} {'window':>15} {'window vs products':>19}")
    products = {}
    for label, name, flags in CELLS:
        gates = native.GATES[name]
        if gates not in products:
            products[gates] = recurrent_products(batch, width, gates, rng, o.calls, o.repeats)
            unit = {4: "LSTM", 3: "GRU"}[gates]
            print(f"{unit + ' recurrent products (BLAS)':32} {'':>15} {_pair(products[gates]):>15}")
        warm, cold = ([_time(kernel_call(kernel, flags, batch, width, rng, frames), o.calls, o.repeats)
                       for kernel in (name, f"{name}_grad")] for frames in (1, o.frames))
        print(f"{label:32} {_pair(warm):>15} {_pair(cold):>15} {sum(cold) / sum(products[gates]):18.2f}x")


def _pair(times):
    return f"{times[0]:.1f}, {times[1]:.1f}"


def recurrent_products(batch, width, gates, rng, calls, repeats):
    """(forward, backward) µs of a frame's recurrent products for a unit with ``gates``
    gates: h W_h [B][i]·[i][gates·i], and d W_hᵀ [B][gates·i]·[gates·i][i], each call on
    the next frame of a window's [T][B][..] arrays (W_h stays in the caches, as in a window)."""
    frames = MODEL["window"]
    h = rng.standard_normal((frames, batch, width)).astype(np.float32)
    W = rng.standard_normal((width, gates * width)).astype(np.float32)
    W_T = np.ascontiguousarray(W.T)
    d = rng.standard_normal((frames, batch, gates * width)).astype(np.float32)
    a, dh = np.empty((frames, batch, gates * width), np.float32), np.empty((frames, batch, width), np.float32)
    at = [0]

    def product(x, w, out):
        t = at[0] = (at[0] + 1) % frames
        np.dot(x[t], w, out=out[t])
    return (_time(lambda: product(h, W, a), calls, repeats), _time(lambda: product(d, W_T, dh), calls, repeats))

if __name__ == "__main__":
    main()
