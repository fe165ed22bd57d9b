"""Training speed and compile time of Sophia's reference model, per compile mode,
against PyTorch's ``nn.LSTM`` on the CPU in the same run.

Reference model: 2-layer LSTM, width 256, input 44, output 1, batch 64,
BPTT(128; 64), float32, Adam. Frames per ``f_train_step`` call = batch × step = 4096.
``--recurrence`` picks how its LSTM layers run: ``auto`` (oneDNN's LSTM in training
steps where it loads, else the fused Ops), ``fused`` or ``scan``.

For every mode the model is first compiled in a fresh process with a new, empty
PyTensor compiledir and NUMBA_CACHE_DIR (*cold*), then ``--rounds`` times in a
PyTorch process followed by a Sophia process that finds the caches the cold one left
(*warm*). A machine's speed drifts from one process to the next, so the ratio to PyTorch is the
median of the per-round ratios, each warm process against the PyTorch process run
just before it. Sophia's trainer keeps freed memory in the process
(``sophia/training/memory.py``), and so does this benchmark's Sophia process; PyTorch
gains as much from that setting, so each round also runs PyTorch under it (*kept*)
and prints that ratio too. Compile time is the wall time from building the Net to the end of
the first ``f_train_step`` call, less one steady-state call (Numba compiles lazily,
at the first call). Training speed is frames per second over ``--steps`` calls after
two warm-up calls; each process measures ``--repeats`` times and keeps the median.

This prints figures; it is not a test. PyTorch is a benchmark-only extra: without
``torch`` importable its columns are skipped with a note. bench/README.md explains
the columns and how to install PyTorch's CPU build.

``--option_sets`` measures the unit options instead: each set of
:data:`OPTION_SETS` on the reference model (mode ``auto``), a cold and a warm
process each, and prints their compile times, frames/s, the ratio to the plain
model measured in the same run, the engines the training graph runs and each
process's peak RSS. The sets ``l2_10`` and ``xent`` give the reference model a
10-wide output trained with l2 and with softmax cross-entropy (one-hot targets):
their ratio is the cost of the loss. With ``torch`` importable, the ``layer_norm`` row is followed by
the layer-norm LSTM a PyTorch user writes (a Python loop over ``Linear`` +
``LayerNorm`` per frame, :func:`torch_layer_norm_worker`) and Sophia's ratio to it.

Example
-------
    python bench/train_speed.py --quick --modes FAST_COMPILE
    .venv-bench/bin/python bench/train_speed.py --modes auto --steps 8 --repeats 3 --rounds 7
    python bench/train_speed.py --option_sets --steps 4 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ALL_MODES = ("auto", "FAST_COMPILE", "CVM", "FAST_RUN", "NUMBA", "JAX")
OPTION_SETS = {          # ModelOptions overrides of the reference model, by name
    "plain": {},
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "weight_norm": dict(weight_norm=True),
    "batch_norm": dict(batch_norm=True),
    "learn_clock_params": dict(learn_clock_params=True),
    "residual_gate": dict(residual_gate=True),
    "learn_id_embedding": dict(learn_id_embedding=True, num_ids=16),
    "layer_norm+peephole+clock": dict(layer_norm=True, peephole=True, learn_clock_params=True),
    "gru": dict(unit_type="gru"),
    "gru+layer_norm": dict(unit_type="gru", layer_norm=True),
    # the loss: l2 and xent on the same 10-wide output (xent: softmax, one-hot targets)
    "l2_10": dict(target_dim=10),
    "xent": dict(target_dim=10, loss_type="xent"),
}
TRAIN_OVERRIDES = ("loss_type",)      # names in an option set that are TrainOptions, not ModelOptions
MODEL = dict(input_dim=44, target_dim=1, width=256, depth=2, batch=64, window=128, step=64)


def _windows(rng, n, target_dim=MODEL["target_dim"], loss_type="l2", dtype="float32"):
    """``n`` random windows (input, time, target) shaped like the reference model's, with
    ``target_dim`` wide targets: Gaussian, or one-hot random classes for a categorical
    ``loss_type`` (xent)."""
    import numpy as np

    m, out = MODEL, []
    for k in range(n):
        x = rng.standard_normal((m["window"], m["batch"], m["input_dim"])).astype(dtype)
        # time signal of streams well inside their sequences: no reset in the window
        t = (k * m["step"] + 1 + np.arange(m["window"])[:, None] + rng.integers(0, 1000, m["batch"])).astype(dtype)
        if loss_type == "xent":
            y = np.eye(target_dim, dtype=dtype)[rng.integers(0, target_dim, (m["window"], m["batch"]))]
        else:
            y = rng.standard_normal((m["window"], m["batch"], target_dim)).astype(dtype)
        out.append((x, t, y))
    return out


def _speed(call, steps, repeats):
    """Median frames/s and median seconds per call over ``repeats`` runs of ``steps`` calls."""
    frames = MODEL["batch"] * MODEL["step"]
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for n in range(steps):
            call(n)
        per_call.append((time.perf_counter() - start) / steps)
    median = statistics.median(per_call)
    return frames / median, median


def _sophia_model(mode, recurrence, overrides=None):
    """The reference model (with ``overrides`` of its ModelOptions, and of its
    TrainOptions' :data:`TRAIN_OVERRIDES`) compiled in this process: ``(call, net)``,
    where ``call(n)`` trains one window and returns its loss."""
    import sophia  # noqa: F401  first, as train.py: it sets OpenBLAS's environment before numpy loads
    import numpy as np
    from sophia.graph.net import Net
    from sophia.options import ModelOptions, TrainOptions, with_output_activation

    m = MODEL
    overrides = dict(overrides or {})
    train_overrides = {name: overrides.pop(name) for name in TRAIN_OVERRIDES if name in overrides}
    options = TrainOptions(batch_size=m["batch"], window_size=m["window"], step_size=m["step"],
                           force_type="adam", compile_mode=mode, **train_overrides)
    model = ModelOptions(**{**dict(input_dim=m["input_dim"], target_dim=m["target_dim"], unit_type="lstm",
                                   net_width=m["width"], net_depth=m["depth"]), **overrides})
    net = Net(with_output_activation(model, options.loss_type), dtype="float32")
    f_train_step, _, _ = net.compile_train_step(options, engine=None if recurrence == "auto" else recurrence)
    windows = _windows(np.random.default_rng(0), 4, model.target_dim, options.loss_type)
    ids = np.zeros((m["window"], m["batch"]), "int32")
    lr = np.float32(1e-4)

    def call(n):
        x, t, y = windows[n % len(windows)]
        loss = f_train_step(x, t, ids, y, lr)[0]
        return float(loss)      # as the trainer reads it; waits for JAX's asynchronous dispatch
    return call, net


def sophia_worker(mode, recurrence, steps, repeats, overrides=None):
    """Compile and train the reference model (see :func:`_sophia_model`) in this process;
    returns a result dict with the training graph's engines and peak RSS."""
    import sophia  # noqa: F401  first, as train.py: it sets OpenBLAS's environment before numpy loads
    import sophia.graph.net  # noqa: F401  imported before the clock starts: the compile time excludes imports
    from sophia.training.memory import keep_freed_memory

    keep_freed_memory()       # as the trainer does
    start = time.perf_counter()
    call, net = _sophia_model(mode, recurrence, overrides)
    compiled = time.perf_counter()
    loss = call(0)
    first = time.perf_counter()
    call(1)
    fps, per_call = _speed(call, steps, repeats)
    import resource

    from sophia.graph.engines import describe
    engines = describe(net.choose_engines(mode, training=True, prefer=None if recurrence == "auto" else recurrence))
    return dict(graph_and_link_s=compiled - start, compile_s=max(first - start - per_call, 0.0),
                frames_per_s=fps, first_loss=loss, engines=engines,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _torch_model():
    """The same model in PyTorch: nn.LSTM + Linear, Adam, BPTT(128; 64); returns
    ``call(n)``, which trains one window and returns its loss.

    The window runs as segments split at frame h' (the stored state is the one
    after frame h' - 1) and at frame h - h' (the loss covers the last h' frames);
    autograd connects the segments, so the gradient goes through all h frames.
    """
    import numpy as np
    import torch

    m = MODEL
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(m["input_dim"], m["width"], num_layers=m["depth"])
    linear = torch.nn.Linear(m["width"], m["target_dim"])
    optimizer = torch.optim.Adam(list(lstm.parameters()) + list(linear.parameters()), lr=1e-4)
    windows = [tuple(torch.from_numpy(a) for a in w) for w in _windows(np.random.default_rng(0), 4)]
    zeros = torch.zeros(m["depth"], m["batch"], m["width"])
    stored = [(zeros, zeros)]
    cuts = sorted({0, m["step"], m["window"] - m["step"], m["window"]})

    def call(n):
        x, _, y = windows[n % len(windows)]
        state, outputs = stored[0], []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            out, state = lstm(x[lo:hi], state)
            outputs.append(out)
            if hi == m["step"]:
                carry = state
        tail = torch.cat(outputs)[m["window"] - m["step"]:]
        loss = torch.nn.functional.mse_loss(linear(tail), y[m["window"] - m["step"]:], reduction="sum") / m["step"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stored[0] = tuple(s.detach() for s in carry)
        return loss.item()
    return call


def torch_worker(steps, repeats, keep_memory=False):
    """:func:`_torch_model` trained in this process; with ``keep_memory``, under the
    malloc setting Sophia's trainer uses."""
    import torch

    if keep_memory:
        from sophia.training.memory import keep_freed_memory
        keep_freed_memory()
    call = _torch_model()
    start = time.perf_counter()
    call(0)
    first = time.perf_counter()
    call(1)
    fps, per_call = _speed(call, steps, repeats)
    return dict(compile_s=max(first - start - per_call, 0.0), frames_per_s=fps,
                threads=torch.get_num_threads(), version=torch.__version__)


def same_process_worker(mode, recurrence, steps, rounds):
    """Sophia's reference model and :func:`_torch_model` in this one process, under
    Sophia's malloc setting, timed alternately: ``rounds`` times ``steps`` Sophia calls
    then ``steps`` PyTorch calls. Both see the same process and the same minute of
    the machine, so their ratio drifts less than one of two processes. Returns the
    frames/s of each per round."""
    from sophia.training.memory import keep_freed_memory

    keep_freed_memory()
    sophia_call, _ = _sophia_model(mode, recurrence)
    torch_call = _torch_model()
    for call in (sophia_call, torch_call):
        call(0)
        call(1)
    sophia_fps, torch_fps = [], []
    for _ in range(rounds):
        sophia_fps.append(_speed(sophia_call, steps, 1)[0])
        torch_fps.append(_speed(torch_call, steps, 1)[0])
    return dict(sophia_fps=sophia_fps, torch_fps=torch_fps)


def torch_layer_norm_worker(steps, repeats):
    """The layer-norm LSTM a PyTorch user writes (``nn.LSTM`` has no layer norm): per
    layer a ``Linear`` for the input and one for the recurrent product, each followed
    by a ``LayerNorm``, and a ``LayerNorm`` of the cell, stepped by a Python loop over
    the frames; Adam and BPTT(128; 64) as :func:`torch_worker`, same malloc setting as
    Sophia (the cell norms are Sophia's ``layer_norm`` paths, sophia/graph/norms.py)."""
    import numpy as np
    import torch
    from torch import nn

    from sophia.training.memory import keep_freed_memory
    keep_freed_memory()
    m = MODEL
    torch.manual_seed(0)

    class LayerNormLSTM(nn.Module):
        def __init__(self, n_in, n_hidden):
            super().__init__()
            self.x_gates, self.h_gates = nn.Linear(n_in, 4 * n_hidden), nn.Linear(n_hidden, 4 * n_hidden, bias=False)
            self.x_norm, self.h_norm = nn.LayerNorm(4 * n_hidden), nn.LayerNorm(4 * n_hidden)
            self.c_norm = nn.LayerNorm(n_hidden)

        def forward(self, x_tbj, state):
            h, c = state
            s_x_tbg = self.x_norm(self.x_gates(x_tbj))        # the input product for all frames at once
            outputs = []
            for x_bg in s_x_tbg:
                i, f, g, o = (x_bg + self.h_norm(self.h_gates(h))).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.c_norm(c))
                outputs.append(h)
            return torch.stack(outputs), (h, c)

    layers = nn.ModuleList([LayerNormLSTM(m["input_dim"] if n == 0 else m["width"], m["width"])
                            for n in range(m["depth"])])
    linear = nn.Linear(m["width"], m["target_dim"])
    optimizer = torch.optim.Adam(list(layers.parameters()) + list(linear.parameters()), lr=1e-4)
    windows = [tuple(torch.from_numpy(a) for a in w) for w in _windows(np.random.default_rng(0), 4)]
    zeros = torch.zeros(m["batch"], m["width"])
    stored = [[(zeros, zeros)] * m["depth"]]

    def call(n):
        x, _, y = windows[n % len(windows)]
        below, carried = x, []
        for layer, state in zip(layers, stored[0]):
            head, carry = layer(below[:m["step"]], state)        # the state after frame h' - 1 is stored
            tail, _ = layer(below[m["step"]:], carry)
            below = torch.cat([head, tail])
            carried.append(carry)
        out = linear(below[m["window"] - m["step"]:])
        loss = nn.functional.mse_loss(out, y[m["window"] - m["step"]:], reduction="sum") / m["step"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stored[0] = [tuple(s.detach() for s in carry) for carry in carried]
        return loss

    call(0)
    fps, _ = _speed(call, steps, repeats)
    return dict(frames_per_s=fps, threads=torch.get_num_threads(), version=torch.__version__)


# -- the parent: one fresh process per measurement ---------------------------------
def _run_worker(args, extra_env, timeout):
    """Run this script as a worker with ``args``; returns its result dict or {'error': ...}."""
    env = dict(os.environ, **extra_env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {done.returncode}: {tail[:200]}"}


def _pytensor_flags(compiledir, blas_ldflags):
    flags = [f"compiledir={compiledir}"]
    if blas_ldflags is not None:
        flags.append(f"blas__ldflags={blas_ldflags}")
    return ",".join(flags)


def measure_mode(mode, recurrence, o, torch_ok):
    """One mode in fresh caches: a cold process, then ``o.rounds`` rounds of a PyTorch
    process, a PyTorch process with freed memory kept (as Sophia's trainer keeps it) and
    a warm Sophia process (interleaved, so that all see the same machine load); then,
    with PyTorch, one process that alternates the two (:func:`same_process_worker`,
    ``o.same_rounds`` rounds). Returns (cold, [warm...], [torch...], [torch kept...],
    same-process result or None)."""
    with tempfile.TemporaryDirectory(prefix="sophia-bench-") as tmp:
        env = {"PYTENSOR_FLAGS": _pytensor_flags(os.path.join(tmp, "pytensor"), o.blas_ldflags),
               "NUMBA_CACHE_DIR": os.path.join(tmp, "numba")}
        args = ["sophia", mode, recurrence, str(o.steps), str(o.repeats)]
        cold = _run_worker(args, env, o.timeout)
        warms, torches, kept, same = [], [], [], None
        if "error" in cold or o.quick:
            return cold, warms, torches, kept, same
        for _ in range(o.rounds):
            if torch_ok:
                torches.append(_run_worker(["torch", str(o.steps), str(o.repeats)], {}, o.timeout))
                kept.append(_run_worker(["torch", str(o.steps), str(o.repeats), "kept"], {}, o.timeout))
            warms.append(_run_worker(args, env, o.timeout))
        if torch_ok and o.same_rounds > 0:
            same = _run_worker(["same_process", mode, recurrence, str(o.steps), str(o.same_rounds)], env, o.timeout)
    return cold, warms, torches, kept, same


def _cpu_model():
    """The CPU's model name and widest vector extension (Linux: /proc/cpuinfo), else
    what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            fields = dict(line.split(":", 1) for line in cpuinfo.read().split("\n\n")[0].splitlines()
                          if ":" in line)
    except OSError:
        return platform.processor() or "unknown CPU"
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = fields.get("flags", "").split()
    vector = next((name for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2")) if flag in flags), "no AVX2")
    return f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, " \
           f"model {fields.get('model', '?')}, {vector})"


def _same_process_summary(same):
    """One line for :func:`same_process_worker`'s result: median frames/s of each and the
    median of the per-round ratios (Sophia / PyTorch), then each round's ratio."""
    ratios = [a / b for a, b in zip(same["sophia_fps"], same["torch_fps"])]
    return (f"Sophia {statistics.median(same['sophia_fps']):,.0f} f/s, PyTorch "
            f"{statistics.median(same['torch_fps']):,.0f} f/s, {statistics.median(ratios):.2f}x (per round "
            + " ".join(f"{r:.2f}" for r in ratios) + ")")


def _fmt(value, spec):
    """``value`` formatted with ``spec``, or a right-aligned "-" of the same width."""
    width = int("".join(c for c in spec.split(".")[0].split(",")[0] if c.isdigit()) or 0)
    return format(value, spec) if isinstance(value, (int, float)) else "-".rjust(width)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated compile modes (default: {','.join(ALL_MODES)}; "
                             "auto with --quick)")
    parser.add_argument("--recurrence", default="auto",
                        help="comma-separated: auto (oneDNN's LSTM where it loads, else the fused Op), "
                             "fused (the fused Op, no oneDNN) and/or scan")
    parser.add_argument("--steps", type=int, default=None, help="f_train_step calls per measurement (20)")
    parser.add_argument("--repeats", type=int, default=None, help="measurements per process (3)")
    parser.add_argument("--quick", action="store_true",
                        help="3 steps, 1 repeat, cold process only: a smoke run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved (PyTorch, warm Sophia) process pairs per mode (3)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch processes")
    parser.add_argument("--same_rounds", type=int, default=7,
                        help="rounds of the one process that alternates Sophia and PyTorch (7; 0: skip it)")
    parser.add_argument("--blas-ldflags", default=None,
                        help="PyTensor's blas__ldflags for the C backend, e.g. -lopenblas")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per worker process")
    parser.add_argument("--option_sets", nargs="?", const=",".join(OPTION_SETS), default=None,
                        metavar="SETS", help="measure unit option sets instead of modes "
                        f"(comma-separated; default all: {','.join(OPTION_SETS)})")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    o = parser.parse_args(argv)
    if o.worker:
        return _worker_main(o.worker)
    if o.option_sets:
        return measure_option_sets(o)
    o.steps = o.steps or (3 if o.quick else 20)
    o.repeats = o.repeats or (1 if o.quick else 3)
    modes = (o.modes or ("auto" if o.quick else ",".join(ALL_MODES))).split(",")
    m = MODEL
    print(f"reference model: {m['depth']}-layer LSTM width {m['width']}, input {m['input_dim']}, "
          f"output {m['target_dim']}, batch {m['batch']}, BPTT({m['window']}; {m['step']}), float32, Adam")
    print(f"{o.steps} calls x {o.repeats} repeats per process (median); "
          f"{m['batch'] * m['step']} frames per call; {os.cpu_count()} CPUs; python {sys.executable}")
    # ratios to PyTorch depend on the CPU (oneDNN's and OpenBLAS's kernels differ per CPU):
    # name it, and OpenBLAS's kernel choice where the environment overrides it
    print(f"cpu: {_cpu_model()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(auto)')}")
    torch_ok = not o.no_torch and _importable("torch")
    print("torch: " + ("nn.LSTM on the CPU, one process before every warm Sophia process" if torch_ok
                       else "skipped (--no-torch)" if o.no_torch else "skipped (torch is not importable)"))
    print(f"\n{'mode':<13}{'recurrence':<11}{'cold s':>8}{'warm s':>8}{'cold f/s':>10}{'warm f/s':>10}"
          f"{'torch f/s':>11}{'vs torch':>10}{'kept f/s':>10}{'vs kept':>9}   per round (vs torch)")
    for mode in modes:
        if mode == "JAX" and not _importable("jax"):
            print(f"{mode:<13}skipped: jax is not installed")
            continue
        for recurrence in o.recurrence.split(","):
            cold, warms, torches, kept, same = measure_mode(mode, recurrence, o, torch_ok)
            failed = [r["error"] for r in [cold, *warms, *torches, *kept] if "error" in r]
            if failed:
                print(f"{mode:<13}{recurrence:<11}failed: {failed[0]}")
                continue
            warm_fps = [r["frames_per_s"] for r in warms]
            torch_fps = [r["frames_per_s"] for r in torches]
            kept_fps = [r["frames_per_s"] for r in kept]
            ratios = [w / t for w, t in zip(warm_fps, torch_fps)]
            kept_ratios = [w / t for w, t in zip(warm_fps, kept_fps)]
            median = (lambda xs: statistics.median(xs) if xs else None)
            ratio = f"{median(ratios):.2f}x" if ratios else "-"
            kept_ratio = f"{median(kept_ratios):.2f}x" if kept_ratios else "-"
            print(f"{mode:<13}{recurrence:<11}{_fmt(cold['compile_s'], '8.1f')}"
                  f"{_fmt(median([r['compile_s'] for r in warms]), '8.1f')}{_fmt(cold['frames_per_s'], '10,.0f')}"
                  f"{_fmt(median(warm_fps), '10,.0f')}{_fmt(median(torch_fps), '11,.0f')}{ratio:>10}"
                  f"{_fmt(median(kept_fps), '10,.0f')}{kept_ratio:>9}   "
                  + " ".join(f"{r:.2f}" for r in ratios), flush=True)
            if warms:
                print(f"{'':<24}warm compile per process: "
                      + " ".join(f"{r['compile_s']:.2f}" for r in warms) + " s", flush=True)
            if same is not None:
                print(f"{'':<24}" + (f"one process, alternating: {_same_process_summary(same)}"
                                     if "error" not in same else f"one process, alternating: failed: {same['error']}"),
                      flush=True)
    if torch_ok and not o.quick:
        print("\nwarm s / f/s: medians over the warm processes; torch f/s: median over its processes;"
              "\nvs torch: median of the per-round ratios (warm Sophia / the PyTorch process of its round);"
              "\nkept f/s, vs kept: the same for PyTorch under Sophia's malloc setting (keep_freed_memory)"
              "\none process, alternating: Sophia and PyTorch in one process under that setting, --steps calls"
              "\n  of each in turn per round; medians over the rounds, the ratio's median of the per-round ratios")
    return 0


def measure_option_sets(o):
    """The option-set table: for each set, a cold process (fresh caches) and a warm one
    (the caches the cold one left), in one mode (``--modes``, default ``auto``); the ratio is to the plain set's warm
    frames/s in the same run."""
    steps, repeats = o.steps or 4, o.repeats or 1
    mode = o.modes or "auto"
    names = o.option_sets.split(",")
    unknown = [n for n in names if n not in OPTION_SETS]
    if unknown:
        raise SystemExit(f"unknown option sets {unknown}; choose from {', '.join(OPTION_SETS)}")
    if "plain" not in names:
        names.insert(0, "plain")
    m = MODEL
    print(f"reference model: {m['depth']}-layer LSTM width {m['width']} (unless the set says gru), "
          f"input {m['input_dim']}, batch {m['batch']}, BPTT({m['window']}; {m['step']}), float32, Adam, {mode}")
    print(f"{steps} calls x {repeats} repeats per process; {os.cpu_count()} CPUs; cpu: {_cpu_model()}")
    print(f"\n{'option set':<27}{'cold s':>8}{'warm s':>8}{'warm f/s':>10}{'vs plain':>9}"
          f"{'peak MiB':>10}   training engines")
    plain, warm_fps = None, {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix="sophia-bench-") as tmp:
            env = {"PYTENSOR_FLAGS": _pytensor_flags(os.path.join(tmp, "pytensor"), o.blas_ldflags),
                   "NUMBA_CACHE_DIR": os.path.join(tmp, "numba")}
            args = ["sophia", mode, "auto", str(steps), str(repeats), json.dumps(OPTION_SETS[name])]
            cold = _run_worker(args, env, o.timeout)
            warm = _run_worker(args, env, o.timeout) if "error" not in cold else cold
        if "error" in warm:
            print(f"{name:<27}failed: {warm['error']}", flush=True)
            continue
        plain = warm["frames_per_s"] if name == "plain" else plain
        warm_fps[name] = warm["frames_per_s"]
        ratio = f"{warm['frames_per_s'] / plain:.2f}x" if plain else "-"
        print(f"{name:<27}{cold['compile_s']:8.1f}{warm['compile_s']:8.1f}{warm['frames_per_s']:10,.0f}"
              f"{ratio:>9}{max(cold['peak_rss_mib'], warm['peak_rss_mib']):10,.0f}   {warm['engines']}",
              flush=True)
        if name == "layer_norm" and _importable("torch"):
            torch_ln = _run_worker(["torch_layer_norm", str(steps), str(repeats)], {}, o.timeout)
            print(f"{'  PyTorch LayerNorm-LSTM loop':<43}"
                  + (f"{torch_ln['frames_per_s']:10,.0f}   layer_norm / loop = "
                     f"{warm['frames_per_s'] / torch_ln['frames_per_s']:.2f}x"
                     if "error" not in torch_ln else f"failed: {torch_ln['error']}"), flush=True)
    if "xent" in warm_fps and "l2_10" in warm_fps:
        print(f"\nthe loss alone: xent / l2_10 warm frames/s = {warm_fps['xent'] / warm_fps['l2_10']:.2f}x")
    return 0


def _importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _worker_main(args):
    if args[0] == "torch_layer_norm":
        result = torch_layer_norm_worker(int(args[1]), int(args[2]))
    elif args[0] == "same_process":
        _, mode, recurrence, steps, rounds = args
        result = same_process_worker(mode, recurrence, int(steps), int(rounds))
    elif args[0] == "torch":
        result = torch_worker(int(args[1]), int(args[2]), keep_memory=args[3:] == ["kept"])
    else:
        _, mode, recurrence, steps, repeats, *overrides = args
        result = sophia_worker(mode, recurrence, int(steps), int(repeats),
                               json.loads(overrides[0]) if overrides else None)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
