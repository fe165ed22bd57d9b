"""Where the reference model's compile and training step spend their time, in this process.

Prints, for ``bench/train_speed.py``'s reference model (2-layer LSTM 256, batch 64,
BPTT(128; 64), float32, Adam) in one compile mode:

- the phases of the compile: building the Net, building and compiling
  ``f_train_step``, the first call's time beyond a steady one, and how long each
  cell kernel took to come up (``sophia/graph/engines/native.py``: loaded from the cache,
  or compiled — run it with an empty ``PYTENSOR_FLAGS=compiledir=...`` for a cold cache);
- then, over ``--steps`` training steps, the time of each graph node's ``perform``
  (every node of a PerformLinker graph, which ``auto`` uses for fused nets), summed
  per node and sorted, with the step's wall time beside their total, and the
  recurrences' Ops against the rest of the step;
- with ``--torch``, PyTorch's model of ``train_speed.py`` in the same process under
  ``torch.profiler``: its step, its LSTM operators and the rest.

Wrapping every ``perform`` adds a few µs a node; the figures are for finding where
time goes, not for comparing modes (``train_speed.py`` does that). It prints
figures; it is not a test.

Example
-------
    python bench/step_profile.py --steps 8 --top 8
    python bench/step_profile.py --steps 8 --top 0 --torch
    PYTENSOR_FLAGS=compiledir=$(mktemp -d) python bench/step_profile.py
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_speed import MODEL, _windows  # noqa: E402  (the benchmark's model and data)


def _timed_kernels(log):
    """Make ``native.kernel`` record how long each kernel took to come up into ``log``."""
    from sophia.graph.engines import native

    load = native.kernel.__wrapped__

    def kernel(name, dtype, flags=0):
        start = time.perf_counter()
        function = load(name, dtype, flags)
        log.append((f"{name}{f' options {flags}' if flags else ''} {dtype}", time.perf_counter() - start))
        return function
    native.kernel = functools.cache(kernel)


def _timed_performs(op_classes, totals, counts):
    """Wrap the ``perform`` of every class in ``op_classes`` to sum its time per node."""
    for cls in op_classes:
        perform = cls.perform

        def timed(self, node, inputs, outputs, *rest, _perform=perform):
            start = time.perf_counter()
            result = _perform(self, node, inputs, outputs, *rest)
            key = f"{str(node.op)[:56]:<56} -> {getattr(outputs[0][0], 'shape', ())}"
            totals[key] += time.perf_counter() - start
            counts[key] += 1
            return result
        cls.perform = timed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="auto", help="compile_mode (default auto)")
    parser.add_argument("--steps", type=int, default=8, help="profiled training steps (default 8)")
    parser.add_argument("--top", type=int, default=20, help="nodes to print (default 20)")
    parser.add_argument("--torch", action="store_true",
                        help="then PyTorch's model of train_speed.py in this process: its LSTM operators against the rest")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a ModelOptions override of the reference model, e.g. layer_norm=true (repeatable)")
    o = parser.parse_args(argv)

    import sophia  # noqa: F401  first, as train.py: it sets OpenBLAS's environment before numpy loads
    import numpy as np
    from sophia.graph.net import Net
    from sophia.options import ModelOptions, TrainOptions, apply_overrides
    from sophia.training.memory import keep_freed_memory

    keep_freed_memory()                                 # as the trainer does
    kernel_log = []
    _timed_kernels(kernel_log)
    m = MODEL

    model = apply_overrides(ModelOptions(input_dim=m["input_dim"], target_dim=m["target_dim"], unit_type="lstm",
                                         net_width=m["width"], net_depth=m["depth"]),
                            dict(item.split("=", 1) for item in o.set))

    def build():
        net = Net(model, dtype="float32")
        built = time.perf_counter()
        options = TrainOptions(batch_size=m["batch"], window_size=m["window"], step_size=m["step"],
                               force_type="adam", compile_mode=o.mode)
        return net.compile_train_step(options)[0], built

    windows = _windows(np.random.default_rng(0), 4)
    ids, lr = np.zeros((m["window"], m["batch"]), "int32"), np.float32(1e-4)

    def call(f, n):
        x, t, y = windows[n % len(windows)]
        return float(f(x, t, ids, y, lr)[0])

    start = time.perf_counter()
    f_train_step, built = build()
    compiled = time.perf_counter()
    call(f_train_step, 0)
    first = time.perf_counter()
    call(f_train_step, 1)
    steady = time.perf_counter() - first
    print(f"compile ({o.mode}): Net {built - start:.3f} s, f_train_step {compiled - built:.3f} s, "
          f"first call {first - compiled:.3f} s against a steady {steady:.3f} s "
          f"-> compile {first - start - steady:.3f} s")
    for name, seconds in kernel_log:
        print(f"  kernel {name}: {seconds:.3f} s")

    totals, counts = collections.defaultdict(float), collections.Counter()
    _timed_performs({type(node.op) for node in f_train_step.maker.fgraph.toposort()}, totals, counts)
    f_profiled, _ = build()                             # thunks bind perform when they are made
    for n in range(2):
        call(f_profiled, n)
    totals.clear(), counts.clear()
    start = time.perf_counter()
    for n in range(o.steps):
        call(f_profiled, n)
    step = (time.perf_counter() - start) / o.steps
    print(f"\nper step: {1e3 * step:.1f} ms wall, {1e3 * sum(totals.values()) / o.steps:.1f} ms in performs "
          f"({o.steps} steps)")
    for key, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[:o.top]:
        print(f"{1e3 * seconds / o.steps:8.2f} ms  {counts[key] // o.steps:3d}x  {key}")
    recurrence = sum(seconds for key, seconds in totals.items() if key.startswith(RECURRENCE_OPS)) / o.steps
    print(f"\nrecurrence Ops {1e3 * recurrence:.1f} ms a step, the rest of the step {1e3 * (step - recurrence):.1f} ms")
    if o.torch:
        _torch_split(o.steps)
    return 0


RECURRENCE_OPS = ("OneDNNLSTM", "LSTMRecurrence", "GRURecurrence")   # node names of the recurrences' Ops


def _torch_split(steps):
    """PyTorch's model of ``train_speed.py`` in this process, ``steps`` steps under
    ``torch.profiler``: the step's time, its LSTM operators' and the rest."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from train_speed import _torch_model

    call = _torch_model()
    call(0), call(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for n in range(steps):
            call(n)
        step = (time.perf_counter() - start) / steps
    lstm_ops = {"aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::lstm_cell",
                "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_lstm_cell_backward_impl"}
    events = prof.key_averages()
    lstm = sum(e.self_cpu_time_total for e in events if e.key in lstm_ops) / steps / 1e6
    ran = ", ".join(sorted(e.key for e in events if e.key in lstm_ops))
    print(f"PyTorch {torch.__version__} in this process, {steps} steps under torch.profiler: {1e3 * step:.1f} ms a step; "
          f"its LSTM operators ({ran}) {1e3 * lstm:.1f} ms, the rest {1e3 * (step - lstm):.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
