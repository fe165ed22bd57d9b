"""Time the pieces of one Hessian-free step: compile, gradient, one G·v product, a full step.

The model: an LSTM net (``--width``, ``--depth``), input 4, output 1, float64 or
float32, windows of ``--window`` frames with the loss on the last ``--step``, a
gradient batch of ``--batch`` streams and a curvature batch of
``--curvature_fraction`` of them (Martens & Sutskever 2011). Prints one line per
figure; the figures belong in bench/README.md's results, not in docstrings.

    python bench/hf_step.py --quick           # with Sophia installed (pip install -e .), or PYTHONPATH=.
    python bench/hf_step.py --width 64 --window 50 --batch 64 --max_cg_iters 50
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--curvature_fraction", type=float, default=0.2)
    parser.add_argument("--max_cg_iters", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--mode", default="FAST_RUN", help="PyTensor compile mode")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, FAST_COMPILE, one step")
    a = parser.parse_args(argv)
    if a.quick:
        a.width, a.window, a.step, a.batch, a.max_cg_iters, a.steps, a.mode = 4, 6, 3, 10, 10, 1, "FAST_COMPILE"

    from sophia.graph.net import Net
    from sophia.optim.hessian_free import (HessianFree, HFSettings, build_net_graph, compile_functions,
                                           curvature_slice)
    from sophia.options import ModelOptions

    net = Net(ModelOptions(input_dim=4, target_dim=1, net_width=a.width, net_depth=a.depth), dtype=a.dtype)
    t0 = time.perf_counter()
    graph = build_net_graph(net, step_size=a.step)
    functions = compile_functions(graph, mode=a.mode)
    print(f"compile_s {time.perf_counter() - t0:.2f}  weights {net.num_weights()}")
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((a.window, a.batch, 4)).astype(a.dtype),
             np.tile(np.arange(a.window, dtype=a.dtype)[:, None], (1, a.batch)),
             np.zeros((a.window, a.batch), "int32"),
             rng.standard_normal((a.window, a.batch, 1)).astype(a.dtype))
    curvature = curvature_slice(batch, a.curvature_fraction)
    v_j = rng.standard_normal(net.num_weights()).astype(a.dtype)
    for name, call in (("grad", lambda: functions.f_grad(*batch)),
                       ("gv", lambda: functions.f_gv(v_j, 0.03, *curvature))):
        call()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        print(f"{name}_ms median {1e3 * float(np.median(times)):.2f}")
    hf = HessianFree(graph.params, functions, HFSettings(max_cg_iters=a.max_cg_iters))
    for n in range(a.steps):
        t = time.perf_counter()
        r = hf.step(batch, curvature)
        print(f"step {n} s {time.perf_counter() - t:.2f}  loss {r.loss_before:.5f} -> {r.loss_after:.5f}"
              f"  rho {r.rho:.3f}  lambda {r.damping:.4g}  cg {r.cg_iterations}  bt {r.backtrack_iteration}"
              f"  alpha {r.alpha:.3g}")


if __name__ == "__main__":
    main()
