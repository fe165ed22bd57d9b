"""Time the pieces of one Hessian-free step: gradient, CG products, backtracking, line search.

The reference model is Martens & Sutskever's (2011): a tanh RNN of ``--width`` 100
units with sparse initialisation, whole sequences of ``--T`` + T/10 frames (the
1997 layout's longest, here T = 200: 220 frames) from zero states, input 2 and
output 1 (the adding problem's widths), a gradient batch of ``--batch`` 1000
sequences and a curvature batch of ``--curvature_fraction`` 0.2 of them, float32,
window and batch sizes static in the functions' types as in training (``--mode JAX``
needs them). ``--unit lstm`` times Sophia's LSTM instead.

Per step it prints the seconds spent in each piece, counted by wrapping the
compiled functions (the step itself is :meth:`HessianFree.step`, unchanged):
the gradient (one ``f_grad`` on the gradient batch), CG (every G·v product on the
curvature batch before the first objective evaluation), backtracking (the
``f_cost`` calls on the kept CG iterates), the reduction ratio's one G·v, and the
line search (the ``f_cost`` calls after it). Before the steps it prints the median
time of one G·v product against one gradient on the same curvature batch, and
against one forward pass (``f_cost``): the R-op/L-op pair should cost about two
gradients' worth of passes (one forward-mode sweep, one reverse).

    python bench/hf_step.py                   # the reference model, 2 steps of at most 50 CG iterations
    python bench/hf_step.py --quick           # tiny sizes, FAST_COMPILE, one step
    python bench/hf_step.py --unit lstm --width 64 --T 100

The figures belong in bench/README.md's results, with the command, date, commit
and CPU.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


class TimedFunctions:
    """The HF functions with each call's name and seconds appended to ``events``."""

    def __init__(self, functions):
        self.inner, self.events = functions, []

    def _timed(self, name, function, *args):
        start = time.perf_counter()
        result = _ready(function(*args))
        self.events.append((name, time.perf_counter() - start))
        return result

    def f_cost(self, *args):
        return self._timed("cost", self.inner.f_cost, *args)

    def f_grad(self, *args):
        return self._timed("grad", self.inner.f_grad, *args)

    def f_gv(self, *args):
        return self._timed("gv", self.inner.f_gv, *args)


def step_pieces(events):
    """``{piece: (calls, seconds)}`` of one step's events, in the order ``HessianFree.step``
    makes its calls: grad, CG's G·v products, backtracking's costs, ρ's one G·v, the
    line search's costs."""
    names = [name for name, _ in events]
    first_cost = names.index("cost") if "cost" in names else len(names)
    last_gv = max(i for i, name in enumerate(names) if name == "gv")
    pieces = {"gradient": [e for e in events[:first_cost] if e[0] == "grad"],
              "cg products": [e for e in events[:first_cost] if e[0] == "gv"],
              "backtracking": [e for e in events[first_cost:last_gv] if e[0] == "cost"],
              "rho product": [events[last_gv]] if last_gv > first_cost else [],
              "line search": [e for e in events[last_gv + 1:] if e[0] == "cost"]}
    return {piece: (len(calls), sum(s for _, s in calls)) for piece, calls in pieces.items()}


def _ready(result):
    """``result`` as numpy arrays: waits for JAX's asynchronous outputs, so a call's
    time is its computation's."""
    if isinstance(result, (list, tuple)):
        return [np.asarray(x) for x in result]
    return np.asarray(result)


def _median_seconds(call, repeats):
    _ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _ready(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", default="rnn", choices=("rnn", "lstm"))
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--T", type=int, default=200, help="minimal length; windows of T + T//10 frames")
    parser.add_argument("--batch", type=int, default=1000, help="gradient batch (sequences)")
    parser.add_argument("--curvature_fraction", type=float, default=0.2)
    parser.add_argument("--max_cg_iters", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="calls per median")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--mode", default="auto", help="compile mode, as compile_mode: auto | FAST_COMPILE | CVM | JAX ...")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, FAST_COMPILE, one step")
    a = parser.parse_args(argv)
    if a.quick:
        a.width, a.T, a.batch, a.max_cg_iters, a.steps, a.repeats, a.mode = 4, 10, 10, 10, 1, 2, "FAST_COMPILE"

    from sophia.graph.modes import compile_mode
    from sophia.graph.net import Net
    from sophia.optim.hessian_free import (HessianFree, HFSettings, build_batch_graphs, compile_functions,
                                           curvature_slice)
    from sophia.options import ModelOptions

    frames = a.T + a.T // 10
    model = dict(input_dim=2, target_dim=1, net_width=a.width, net_depth=1, unit_type=a.unit)
    if a.unit == "rnn":
        model.update(init_type="sparse", init_scale=0.258, orthogonal_recurrent=False)
    net = Net(ModelOptions(**model), dtype=a.dtype)
    start = time.perf_counter()
    graph, curvature_graph = build_batch_graphs(net, frames, "l2", frames, a.batch, a.curvature_fraction)
    functions = compile_functions(graph, mode=compile_mode(a.mode, looped=True), curvature_graph=curvature_graph)
    compile_seconds = time.perf_counter() - start

    rng = np.random.default_rng(0)
    batch = (rng.uniform(-1, 1, (frames, a.batch, 2)).astype(a.dtype),
             np.tile(np.arange(frames, dtype=a.dtype)[:, None], (1, a.batch)),
             np.zeros((frames, a.batch), "int32"),
             np.full((frames, a.batch, 1), np.nan, a.dtype))
    batch[3][-1] = rng.uniform(0, 1, (a.batch, 1))              # one answer a sequence, at its end
    curvature = curvature_slice(batch, a.curvature_fraction)
    print(f"model {a.unit} {a.width} units, {net.num_weights()} weights; window {frames} frames; "
          f"gradient batch {a.batch}, curvature batch {curvature[0].shape[1]}; {a.dtype}; mode {a.mode}")
    print(f"compile_s {compile_seconds:.2f}")
    v_j = rng.standard_normal(net.num_weights()).astype(a.dtype)
    structural = np.asarray(0.03, a.dtype)
    on_curvature = compile_functions(curvature_graph, mode=compile_mode(a.mode, looped=True))
    gv = _median_seconds(lambda: on_curvature.f_gv(v_j, structural, *curvature), a.repeats)
    grad = _median_seconds(lambda: on_curvature.f_grad(*curvature), a.repeats)
    cost = _median_seconds(lambda: on_curvature.f_cost(*curvature), a.repeats)
    print(f"curvature batch, median of {a.repeats}: G·v {1e3 * gv:.1f} ms, gradient {1e3 * grad:.1f} ms, "
          f"forward {1e3 * cost:.1f} ms; G·v / gradient {gv / grad:.2f}, G·v / forward {gv / cost:.2f}, "
          f"gradient / forward {grad / cost:.2f}")

    timed = TimedFunctions(functions)
    hf = HessianFree(graph.params, timed, HFSettings(max_cg_iters=a.max_cg_iters))
    for n in range(a.steps):
        timed.events.clear()
        start = time.perf_counter()
        report = hf.step(batch, curvature)
        total = time.perf_counter() - start
        pieces = step_pieces(timed.events)
        counted = sum(seconds for _, seconds in pieces.values())
        text = ", ".join(f"{piece} {seconds:.2f} s ({calls} calls)" for piece, (calls, seconds) in pieces.items())
        print(f"step {n}: {total:.2f} s = {text}, other {total - counted:.2f} s; "
              f"loss {report.loss_before:.5f} -> {report.loss_after:.5f}, CG {report.cg_iterations}, "
              f"rho {report.rho:.3f}, lambda {report.damping:.3g}")


if __name__ == "__main__":
    main()
