"""Training epochs of ``update_type = "hessian_free"``: HF steps over the iterator's windows.

The trainer (:mod:`sophia.training.trainer`) calls these where a first-order run
calls ``f_train_step``; annealing, evaluation and the workspace are the same.

What is here:

- :func:`compile_hf` — the :class:`~sophia.optim.hessian_free.HessianFree` driver of
  a net, on the scan engine (:data:`ENGINE_NOTE` says why), with the run's
  :class:`~sophia.optim.hessian_free.HFSettings`.
- :func:`zero_state_batch` — a window as HF sees it: HF starts every window from zero
  states, so a stream's frames that continue a sequence begun in an earlier window
  have lost their context, and their targets are left out (NaN). The trainer's
  iterator reads whole sequences (``whole_sequences``), so only a sequence longer
  than the window has such frames.
- :func:`train_frames` → :class:`HFEpoch` — one epoch's HF steps, one per window
  (the gradient batch: all streams; the curvature batch: the first
  ``hf_curvature_batch_fraction`` of them, :func:`~sophia.optim.hessian_free.curvature_slice`),
  and the epoch's record fields (mean ρ, final λ, mean CG iterations).

Example
-------
>>> hf = compile_hf(net, train_options)                                  # doctest: +SKIP
>>> epoch = train_frames(hf, windows, 10_000, 0.2)                       # doctest: +SKIP
>>> epoch.fields["hf_damping"] == hf.damping                             # doctest: +SKIP
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sophia.graph.modes import compile_mode, hessian_free_mode
from sophia.optim.hessian_free import (HessianFree, HFSettings, build_batch_graphs,
                                       compile_functions, curvature_slice)

ENGINE_NOTE = "HF step on the scan engine (the fused/oneDNN engines have no R-op)"


def compile_hf(net, train_options) -> HessianFree:
    """Build and compile the HF graph of ``net`` (loss over the whole window:
    ``step_size == window_size``) in the run's compile mode; return the driver. Window
    and batch sizes are static in its functions' types, as in ``f_train_step`` (the
    gradient batch: ``batch_size`` streams; the curvature products: their
    ``hf_curvature_batch_fraction``), which JAX needs.

    ``auto`` compiles them under JAX where it is installed, else as any graph that keeps
    a scan (:func:`sophia.graph.modes.hessian_free_mode`).
    """
    o = train_options
    graph, curvature = build_batch_graphs(net, o.step_size, o.loss_type, o.window_size, o.batch_size,
                                          o.hf_curvature_batch_fraction)
    functions = compile_functions(graph, mode=compile_mode(hessian_free_mode(o.compile_mode), looped=True),
                                  curvature_graph=curvature)
    return HessianFree(graph.params, functions, HFSettings.from_options(o))


def zero_state_batch(window) -> tuple:
    """``(input_tbj, time_tb, id_tb, target_tbk)`` of ``window`` for an HF step.

    The target is a copy with NaN at every frame of a stream before its first reset
    (time ≤ 0) in the window: those frames continue a sequence whose start was in an
    earlier window, and HF, which starts each window from zero states, cannot see it.
    The other arrays are the window's own (the iterator overwrites them later).
    """
    seen_tb = np.logical_or.accumulate(window.time_tb <= 0, axis=0)
    target_tbk = np.where(seen_tb[:, :, None], window.target_tbk, np.nan).astype(window.target_tbk.dtype)
    return window.input_tbj, window.time_tb, window.id_tb, target_tbk


@dataclass
class HFEpoch:
    """What :func:`train_frames` did: the training loss per target frame (before each
    step, on the steps' batches; NaN without target frames, inf after a non-finite
    one), the frames read, whether every loss was finite, and the record fields
    ``hf_steps``, ``hf_rejected`` (steps whose line search found no decrease),
    ``hf_rho`` (mean finite reduction ratio ρ; NaN if none), ``hf_damping`` (λ
    after the epoch) and ``hf_cg_iterations`` (mean CG iterations per step)."""

    loss: float
    frames: int
    finite: bool
    fields: dict = field(default_factory=dict)


def train_frames(hf: HessianFree, windows, frames_per_epoch: int, curvature_fraction: float,
                 on_frames: Callable[[int], None] = lambda frames: None) -> HFEpoch:
    """HF steps on windows from the iterator ``windows`` until ``frames_per_epoch``
    new frames are read; a window without a target frame (after
    :func:`zero_state_batch`) is read but not stepped on.

    As a side effect, updates the parameters and ``hf``'s λ and CG direction, and
    calls ``on_frames`` with the frames read so far (a progress bar). Stops early,
    with ``finite`` False and an infinite loss, at the first non-finite loss.
    """
    total = target_frames = 0.0
    frames, reports = 0, []
    while frames < frames_per_epoch:
        w = next(windows)
        frames += w.new_frames
        on_frames(frames)
        batch = zero_state_batch(w)
        n_frames = int((~np.isnan(batch[3])).any(axis=2).sum())
        if n_frames == 0:
            continue
        report = hf.step(batch, curvature_slice(batch, curvature_fraction))
        reports.append(report)
        if not (math.isfinite(report.loss_before) and math.isfinite(report.loss_after)):
            return HFEpoch(math.inf, frames, False, _fields(hf, reports))
        total, target_frames = total + report.loss_before * n_frames, target_frames + n_frames
    loss = total / target_frames if target_frames else math.nan
    return HFEpoch(loss, frames, True, _fields(hf, reports))


def _fields(hf: HessianFree, reports) -> dict:
    rhos = [r.rho for r in reports if math.isfinite(r.rho)]
    return {"hf_steps": len(reports), "hf_rejected": sum(not r.accepted for r in reports),
            "hf_rho": float(np.mean(rhos)) if rhos else math.nan, "hf_damping": hf.damping,
            "hf_cg_iterations": (float(np.mean([r.cg_iterations for r in reports]))
                                 if reports else math.nan)}
