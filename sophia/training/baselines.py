"""The trivial baselines a run's losses are printed beside, computed in numpy.

- :func:`mean_baseline` -- the loss per target frame of predicting the mean target
  (``l2``, ``l1``, ``huber``: the same definitions as :mod:`sophia.optim.losses`).
- :func:`categorical_baseline` -- the class prior's entropy and the majority
  accuracy (``xent``, ``bce``).
- :func:`gaussian_baseline` -- the NLL of one normal distribution per target
  element, fitted to the training targets (``gaussian``).
- :func:`quantile_baseline` -- the pinball loss of the training targets' empirical
  quantiles (``quantile``).

They stream through a split's memory-mapped targets in chunks: memory does not
grow with the data.

Example
-------
>>> from sophia.data.dataset import Dataset
>>> dev = Dataset.open("data/demo-adding", "dev")                 # doctest: +SKIP
>>> round(mean_baseline(dev, "l2"), 4)                            # doctest: +SKIP
0.0408
"""
from __future__ import annotations

import math

import numpy as np

from sophia.data.dataset import Dataset

_NP_LOSSES = {"l2": lambda e, d: e * e, "l1": lambda e, d: np.abs(e),
              "huber": lambda e, d: np.where(np.abs(e) <= d, 0.5 * e * e, d * (np.abs(e) - 0.5 * d))}
_CHUNK = 1 << 16                     # frames read at a time
_QUANTILE_SAMPLE = 1 << 20           # training values per element the empirical quantiles read at most


def mean_baseline(dataset: Dataset, loss_type: str, huber_delta: float = 1.0) -> float:
    """Loss per target frame of predicting the mean target (per dim, NaN ignored).

    Streams twice through the memory maps; memory does not grow with the data.
    Returns NaN if the split has no targets.
    """
    k = dataset.target_dim
    sums, counts = np.zeros(k), np.zeros(k)
    for chunk_tk in _target_chunks(dataset):
        valid = ~np.isnan(chunk_tk)
        sums += np.where(valid, chunk_tk, 0.0).sum(axis=0)
        counts += valid.sum(axis=0)
    mean_k = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    total, frames = 0.0, 0
    for chunk_tk in _target_chunks(dataset):
        valid = ~np.isnan(chunk_tk)
        loss = _NP_LOSSES[loss_type](np.where(valid, chunk_tk - mean_k, 0.0), huber_delta)
        total += float(np.where(valid, loss, 0.0).sum())
        frames += int(valid.any(axis=1).sum())
    return total / frames if frames else math.nan


def categorical_baseline(train: Dataset, dev: Dataset, loss_type: str) -> tuple[float, float]:
    """``(entropy, majority accuracy)`` of the trivial predictor of a categorical loss.

    xent: the entropy (nats) of the class prior of ``train``'s target frames, and the
    accuracy on ``dev`` of always predicting ``train``'s most frequent class. bce: the
    per-label Bernoulli entropies of ``train`` summed, and the per-element accuracy on
    ``dev`` of predicting each label's more frequent value. NaN without targets.
    """
    k = train.target_dim
    ones_k, valid_k = np.zeros(k), np.zeros(k)
    for chunk_tk in _target_chunks(train):
        ones_k += np.nansum(chunk_tk, axis=0)
        valid_k += (~np.isnan(chunk_tk)).sum(axis=0)
    right = judged = 0
    if loss_type == "xent":               # a target frame is one-hot or all NaN
        prior_k = ones_k / max(ones_k.sum(), 1.0)
        entropy = -float(np.sum(_plogp(prior_k))) if ones_k.any() else math.nan
        major = int(np.argmax(ones_k))
        for chunk_tk in _target_chunks(dev):
            rows = ~np.isnan(chunk_tk).all(axis=1)
            right += int((np.argmax(chunk_tk[rows], axis=1) == major).sum())
            judged += int(rows.sum())
    else:
        q_k = ones_k / np.maximum(valid_k, 1.0)
        entropy = -float(np.sum((_plogp(q_k) + _plogp(1.0 - q_k))[valid_k > 0])) if valid_k.any() else math.nan
        major_k = (q_k >= 0.5).astype(np.float64)
        for chunk_tk in _target_chunks(dev):
            valid_tk = ~np.isnan(chunk_tk)
            right += int(((chunk_tk == major_k) & valid_tk).sum())
            judged += int(valid_tk.sum())
    return entropy, (right / judged if judged else math.nan)


def gaussian_baseline(train: Dataset, dev: Dataset) -> float:
    """NLL per target frame on ``dev`` of N(mean_k, var_k) fitted to ``train``'s targets.

    Per target element: the mean and (maximum-likelihood) variance of its non-NaN
    training values, the variance floored at 1e-12; the NLL as in
    :mod:`sophia.optim.losses` (``½ log 2π`` included). NaN without targets.
    """
    k = train.target_dim
    sums, squares, counts = np.zeros(k), np.zeros(k), np.zeros(k)
    for chunk_tk in _target_chunks(train):
        valid = ~np.isnan(chunk_tk)
        values = np.where(valid, chunk_tk, 0.0)
        sums += values.sum(axis=0)
        squares += (values * values).sum(axis=0)
        counts += valid.sum(axis=0)
    mean_k = sums / np.maximum(counts, 1)
    var_k = np.maximum(squares / np.maximum(counts, 1) - mean_k ** 2, 1e-12)
    total, frames = 0.0, 0
    for chunk_tk in _target_chunks(dev):
        valid = ~np.isnan(chunk_tk)
        err = np.where(valid, chunk_tk - mean_k, 0.0)
        nll = 0.5 * (math.log(2 * math.pi) + np.log(var_k) + err * err / var_k)
        total += float(np.where(valid, nll, 0.0).sum())
        frames += int(valid.any(axis=1).sum())
    return total / frames if frames and counts.all() else math.nan


def quantile_baseline(train: Dataset, dev: Dataset, quantiles) -> float:
    """Pinball loss per target frame on ``dev`` of ``train``'s empirical quantiles.

    Per target element, ``np.quantile`` of its non-NaN training values (an even
    sample of at most 2^20 of them) at each level; the loss as in
    :mod:`sophia.optim.losses` (averaged over levels, summed over elements).
    NaN without targets.
    """
    k, levels = train.target_dim, np.asarray(quantiles, np.float64)
    step = max(1, -(-train.num_frames // _QUANTILE_SAMPLE))
    values = [[] for _ in range(k)]
    for chunk_tk in _target_chunks(train):
        for e in range(k):
            column = chunk_tk[::step, e]
            values[e].append(column[~np.isnan(column)])
    values = [np.concatenate(v) if v else np.zeros(0) for v in values]
    if any(v.size == 0 for v in values):
        return math.nan
    q_ck = np.stack([np.quantile(v, levels) for v in values], axis=1)
    total, frames = 0.0, 0
    for chunk_tk in _target_chunks(dev):
        valid = ~np.isnan(chunk_tk)
        u_tck = np.where(valid, chunk_tk, 0.0)[:, None, :] - q_ck[None]
        loss_tck = np.maximum(levels[:, None] * u_tck, (levels[:, None] - 1.0) * u_tck)
        total += float(np.where(valid, loss_tck.mean(axis=1), 0.0).sum())
        frames += int(valid.any(axis=1).sum())
    return total / frames if frames else math.nan


def _plogp(p):
    """``p log p`` elementwise, 0 at p = 0."""
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def _target_chunks(dataset: Dataset):
    for i, seq in enumerate(dataset.sequences):
        target_tk = dataset.target(i)
        for start in range(0, seq.length, _CHUNK):
            yield np.asarray(target_tk[start:start + _CHUNK], dtype=np.float64)
