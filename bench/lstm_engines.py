"""One LSTM layer's training window on oneDNN against the fused Ops' code, and
against PyTorch's ``nn.LSTM``.

Times the forward and backward of one window (``OneDNNLSTM`` and its gradient Op,
called directly) with each engine forced, for layer sizes and numbers of
reset-free segments (every stream resets at the same frames, evenly spaced; the
carry frame is mid-window). The fused engine includes the input product and its
gradients, which the Ops leave to the graph. This is what
``sophia.graph.engines.onednn_lstm.runs_on_onednn``'s thresholds rest on.

Where ``torch`` is importable, the same window also runs through a one-layer
``nn.LSTM`` (split into the same segments, zero states after each reset, the
carried state otherwise; backward of the same output gradient), in the same
process and alternating with Sophia's engines, so the ratio is not a comparison
of two processes on a machine whose speed drifts. It prints which ATen operator
PyTorch's LSTM ran (``aten::mkldnn_rnn_layer`` is oneDNN's RNN primitive, the
one ``OneDNNLSTM`` calls).

Example
-------
    python bench/lstm_engines.py
    python bench/lstm_engines.py --repeats 11 --no-torch
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import sophia  # noqa: F401  first: OpenBLAS's environment (sophia/_blas.py)
import numpy as np

from sophia.graph.engines import onednn, onednn_lstm
from sophia.training.memory import keep_freed_memory

# (frames, batch, input width, width, segment counts)
CASES = [(128, 64, 256, 256, (1, 4, 8, 16, 32)), (128, 64, 64, 64, (1, 8, 16, 32)),
         (128, 16, 256, 256, (1, 16)), (32, 16, 32, 32, (1, 4, 8))]


def _window(frames, batch, j, i, n_segments):
    """One case's window: ``(rng, x_tbj, d_h_tbi, time_tb, carry)``, every stream reset at
    ``n_segments`` - 1 evenly spaced frames, the carry frame mid-window, and the random
    generator the arrays came from."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((frames, batch, j)).astype(np.float32)
    d_h = rng.standard_normal((frames, batch, i)).astype(np.float32)
    time_tb = np.ones((frames, batch), np.float32)
    time_tb[np.linspace(0, frames, n_segments, endpoint=False).astype(int)[1:]] = 0.0
    return rng, x, d_h, time_tb, frames // 2 - 1


def window_time(frames, batch, j, i, n_segments, engine, repeats):
    """Median seconds of one forward + backward window with ``engine`` forced, and the
    number of segments the Op cuts it into (the resets' plus the carry frame's)."""
    rng, x, d_h, time_tb, carry = _window(frames, batch, j, i, n_segments)
    f32 = np.float32
    W_x = (0.1 * rng.standard_normal((j, 4 * i))).astype(f32)
    W_h = (0.1 * rng.standard_normal((i, 4 * i))).astype(f32)
    b, h0, state = np.zeros(4 * i, f32), np.zeros(i, f32), np.zeros((batch, i), f32)
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
        seconds = _median_time(once, repeats)
    finally:
        onednn_lstm.MIN_BATCH_X_WIDTH, onednn_lstm.MIN_FRAMES_PER_SEGMENT = defaults
    return seconds, len(onednn_lstm.segments(time_tb <= 0, carry))


def _median_time(once, repeats, warmup=3):
    """Median seconds of ``once()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_window_time(frames, batch, j, i, n_segments, repeats, profile=False):
    """Median seconds of the same window through a one-layer ``nn.LSTM`` (forward and
    backward, cut where :func:`window_time`'s Op cuts it), and with ``profile`` the
    name of the ATen operator that ran the recurrence ('' if none was recognised)."""
    import torch

    _, x, d_h, time_tb, carry = _window(frames, batch, j, i, n_segments)
    x = torch.from_numpy(x).requires_grad_()          # its gradient too, as the Ops form it
    d_h = torch.from_numpy(d_h)
    pieces = onednn_lstm.segments(time_tb <= 0, carry)
    lstm = torch.nn.LSTM(j, i)
    zeros = torch.zeros(1, batch, i)

    def once():
        state, outputs = (zeros, zeros), []
        for lo, hi in pieces:
            if (time_tb[lo] <= 0).any():
                state = (zeros, zeros)
            out, state = lstm(x[lo:hi], state)
            outputs.append(out)
        lstm.zero_grad(set_to_none=True)
        (torch.cat(outputs) * d_h).sum().backward()

    seconds = _median_time(once, repeats)
    ran = ""
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            once()
        names = {e.key for e in prof.key_averages()}
        ran = next((n for n in ("aten::mkldnn_rnn_layer", "aten::_thnn_fused_lstm_cell", "aten::lstm_cell",
                                "aten::lstm") if n in names), "")
    return seconds, ran


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed windows per case (median)")
    parser.add_argument("--no-torch", action="store_true", help="skip nn.LSTM even where torch is importable")
    o = parser.parse_args(argv)
    if not onednn.available():
        raise SystemExit(f"oneDNN is not available: {onednn.UNAVAILABLE_REASON}")
    keep_freed_memory()                                  # as the trainer does (PyTorch's runs share it)
    with_torch = not o.no_torch and importlib.util.find_spec("torch") is not None
    if with_torch:
        import torch
        _, ran = torch_window_time(*CASES[0][:4], 1, 1, profile=True)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: nn.LSTM ran {ran or 'an unrecognised operator'}")
    elif not o.no_torch:
        print("torch is not importable: its columns are skipped (bench/README.md says how to install it)")
    print(f"{'frames':>6}{'batch':>6}{'j':>5}{'width':>6}{'segments':>9}{'oneDNN ms':>11}{'fused ms':>10}"
          f"{'speed-up':>10}" + (f"{'torch ms':>10}{'vs torch':>10}" if with_torch else "") + "  default engine")
    for frames, batch, j, i, counts in CASES:
        for n in counts:
            (t_onednn, segments), (t_fused, _) = (window_time(frames, batch, j, i, n, e, o.repeats)
                                                  for e in ("onednn", "fused"))
            default = "oneDNN" if onednn_lstm.runs_on_onednn(batch, i, frames, segments) else "fused"
            torch_columns = ""
            if with_torch:
                t_torch, _ = torch_window_time(frames, batch, j, i, n, o.repeats)
                t_default = t_onednn if default == "oneDNN" else t_fused
                torch_columns = f"{1e3 * t_torch:>10.2f}{t_torch / t_default:>9.2f}x"
            print(f"{frames:>6}{batch:>6}{j:>5}{i:>6}{segments:>9}{1e3 * t_onednn:>11.2f}{1e3 * t_fused:>10.2f}"
                  f"{t_fused / t_onednn:>9.2f}x{torch_columns}  {default}", flush=True)


if __name__ == "__main__":
    main()
