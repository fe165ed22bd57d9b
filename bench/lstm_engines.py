"""One LSTM layer's training window on oneDNN against the fused Ops' code.

Times the forward and backward of one window (``OneDNNLSTM`` and its gradient Op,
called directly) with each engine forced, for layer sizes and numbers of
reset-free segments (every stream resets at the same frames, evenly spaced; the
carry frame is mid-window). The fused engine includes the input product and its
gradients, which the Ops leave to the graph. This is what
``sophia.graph.engines.onednn_lstm.runs_on_onednn``'s thresholds rest on.

Example
-------
    python bench/lstm_engines.py
    python bench/lstm_engines.py --repeats 11
"""
from __future__ import annotations

import argparse
import statistics
import time

import sophia  # noqa: F401  first: OpenBLAS's environment (sophia/_blas.py)
import numpy as np

from sophia.graph.engines import onednn, onednn_lstm
from sophia.training.memory import keep_freed_memory

# (frames, batch, input width, width, segment counts)
CASES = [(128, 64, 256, 256, (1, 4, 8, 16, 32)), (128, 64, 64, 64, (1, 8, 16, 32)),
         (128, 16, 256, 256, (1, 16)), (32, 16, 32, 32, (1, 4, 8))]


def window_time(frames, batch, j, i, n_segments, engine, repeats):
    """Median seconds of one forward + backward window with ``engine`` forced, and the
    number of segments the Op cuts it into (the resets' plus the carry frame's)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = rng.standard_normal((frames, batch, j)).astype(f32)
    W_x = (0.1 * rng.standard_normal((j, 4 * i))).astype(f32)
    W_h = (0.1 * rng.standard_normal((i, 4 * i))).astype(f32)
    b, h0, state = np.zeros(4 * i, f32), np.zeros(i, f32), np.zeros((batch, i), f32)
    time_tb = np.ones((frames, batch), f32)
    time_tb[np.linspace(0, frames, n_segments, endpoint=False).astype(int)[1:]] = 0.0
    d_h = rng.standard_normal((frames, batch, i)).astype(f32)
    carry = frames // 2 - 1
    forward, backward = onednn_lstm.OneDNNLSTM(carry), onednn_lstm.OneDNNLSTMGrad(carry, (True, False, False))
    inputs = [x, time_tb, W_x, W_h, b, h0, h0, state, state]

    def once():
        out = [[None] for _ in range(7)]
        forward.perform(None, inputs, out)
        backward.perform(None, inputs + [out[0][0], *[o[0] for o in out[3:]], d_h], [[None] for _ in range(8)])

    defaults = onednn_lstm.MIN_BATCH_X_WIDTH, onednn_lstm.MIN_FRAMES_PER_SEGMENT
    forced = (0, 0) if engine == "onednn" else (10 ** 9, 10 ** 9)
    onednn_lstm.MIN_BATCH_X_WIDTH, onednn_lstm.MIN_FRAMES_PER_SEGMENT = forced
    try:
        for _ in range(3):
            once()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
    finally:
        onednn_lstm.MIN_BATCH_X_WIDTH, onednn_lstm.MIN_FRAMES_PER_SEGMENT = defaults
    return statistics.median(times), len(onednn_lstm.segments(time_tb <= 0, carry))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed windows per case (median)")
    o = parser.parse_args(argv)
    if not onednn.available():
        raise SystemExit(f"oneDNN is not available: {onednn.UNAVAILABLE_REASON}")
    keep_freed_memory()                                  # as the trainer does
    print(f"{'frames':>6}{'batch':>6}{'j':>5}{'width':>6}{'segments':>9}{'oneDNN ms':>11}{'fused ms':>10}"
          f"{'speed-up':>10}  default engine")
    for frames, batch, j, i, counts in CASES:
        for n in counts:
            (t_onednn, segments), (t_fused, _) = (window_time(frames, batch, j, i, n, e, o.repeats)
                                                  for e in ("onednn", "fused"))
            default = "oneDNN" if onednn_lstm.runs_on_onednn(batch, i, frames, segments) else "fused"
            print(f"{frames:>6}{batch:>6}{j:>5}{i:>6}{segments:>9}{1e3 * t_onednn:>11.2f}{1e3 * t_fused:>10.2f}"
                  f"{t_fused / t_onednn:>9.2f}x  {default}", flush=True)


if __name__ == "__main__":
    main()
