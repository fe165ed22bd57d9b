"""A deep-learning peer on the real series: neuralforecast's LSTM on Sophia's splits.

A benchmark-only extra (neuralforecast and PyTorch are not Sophia's dependencies;
install them beside it: ``pip install neuralforecast``). For each ``--series`` it
writes the series as ``bench/reproduce.py real`` does (``sophia-data make real``
with the series' :data:`reproduce.REAL_SERIES` options and ``--whole-eval``), so
the values, their normalisation and the split by time are the ones the net and the
baselines of ``bench/RESULTS.md`` saw. The train, dev and test splits are
contiguous blocks of the normalised series; their concatenation is the history the
peer reads.

The peer is ``neuralforecast.models.LSTM`` with horizon 1, trained once by
``NeuralForecast.cross_validation(refit=False)`` on every value before the test
split, the last ``len(dev)`` of them held out for its early stopping (Sophia's net
trains on train and keeps its best model on dev), with MSE loss and the lags the
AR baseline may use (``max_ar``) as its input window. It then forecasts each test
frame from the history before it, and is scored on the frames sophia-eval scores:
every test target after the first ``warmup`` frames. RMSE is given in the units of
the series, as in ``bench/RESULTS.md`` (of the changes, or log changes, for those
transforms). Training time is the wall time of the fit, PyTorch on ``--threads``
threads (default 1, as the reproduce runs set ``OPENBLAS_NUM_THREADS=1``).

Example
-------
    python bench/forecast_peer.py --series co2 elnino taylor sunspots msft --seed 1
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import reproduce  # noqa: E402  (puts the repository on sys.path)

from sophia.data.dataset import Dataset  # noqa: E402


def split_values(data_dir, split) -> np.ndarray:
    """The normalised values of a split, [t]: each sequence's inputs and its last target
    (one-step-ahead sequences of consecutive values, in time order)."""
    ds = Dataset.open(str(data_dir), split, 1, 1)
    pieces = [np.asarray(ds.input(i))[:, 0] for i in range(len(ds))]
    return np.concatenate(pieces + [np.asarray(ds.target(len(ds) - 1))[-1:, 0]])


def forecast(values_t, n_dev, n_scored, input_size, seed, max_steps, hidden):
    """One-step-ahead forecasts of the last ``n_scored`` values of ``values_t`` [t], by
    neuralforecast's LSTM fitted once on the values before them (early-stopped on the
    ``n_dev`` values that end that history). Returns ``(forecast [n_scored], seconds)``."""
    import pandas as pd
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MSE
    from neuralforecast.models import LSTM

    model = LSTM(h=1, input_size=input_size, encoder_hidden_size=hidden, decoder_hidden_size=hidden,
                 loss=MSE(), scaler_type="identity", max_steps=max_steps, val_check_steps=25,
                 early_stop_patience_steps=8, random_seed=seed, enable_progress_bar=False,
                 enable_model_summary=False, logger=False, enable_checkpointing=False)
    frame = pd.DataFrame({"unique_id": "s", "ds": np.arange(len(values_t)), "y": values_t})
    start = time.monotonic()
    result = NeuralForecast(models=[model], freq=1).cross_validation(
        df=frame, val_size=n_dev, test_size=n_scored, n_windows=None, step_size=1, refit=False)
    seconds = time.monotonic() - start
    result = result.sort_values("ds")
    if not np.allclose(result["y"].to_numpy(), values_t[-n_scored:]):
        raise RuntimeError("neuralforecast's windows do not line up with the scored frames")
    return result["LSTM"].to_numpy(np.float64), seconds


def run_series(series, work, seed, threads, max_steps, hidden):
    """Write ``series``' data, fit and score the peer; return a report dict."""
    import torch

    torch.set_num_threads(threads)
    setup = reproduce.REAL_SERIES[series]
    data = work / series
    reproduce.make_data("real", data, seed, None, series=series, transform=setup["transform"],
                        min_len=setup["min_len"], max_len=setup["max_len"], whole_eval=True)
    train, dev, test = (split_values(data, s) for s in ("train", "dev", "test"))
    values_t = np.concatenate([train, dev, test])
    n_scored = len(test) - 1 - setup["warmup"]          # the test targets after the warm-up
    prediction, seconds = forecast(values_t, len(dev), n_scored, setup["max_ar"], seed,
                                   max_steps, hidden)
    std = float(np.fromfile(data / "std.matrix", "<f4")[0])
    error = prediction - values_t[-n_scored:]
    return dict(series=series, transform=setup["transform"], scored=n_scored,
                input_size=setup["max_ar"], hidden=hidden, seed=seed, threads=threads,
                rmse_series_units=float(std * np.sqrt(np.mean(error ** 2))),
                mae_series_units=float(std * np.mean(np.abs(error))), train_seconds=round(seconds, 1))


def build_parser():
    parser = argparse.ArgumentParser(prog="bench/forecast_peer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", nargs="+", choices=tuple(reproduce.REAL_SERIES),
                        default=list(reproduce.REAL_SERIES))
    parser.add_argument("--seed", type=int, default=1, help="data (sequence cuts) and the peer's seed")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--max_steps", type=int, default=1000, help="the peer's training steps at most")
    parser.add_argument("--hidden", type=int, default=128, help="the peer's encoder and decoder width "
                        "(neuralforecast's default)")
    parser.add_argument("--work", type=Path, help="data directory (default: sophia-repro/peer in "
                        "the system's temporary directory)")
    return parser


def main(argv=None) -> list:
    """Fit and score the peer on each series; print a Markdown table and write report.json."""
    args = build_parser().parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / "sophia-repro" / "peer"
    work.mkdir(parents=True, exist_ok=True)
    reports = [run_series(s, work, args.seed, args.threads, args.max_steps, args.hidden)
               for s in args.series]
    (work / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
    print("\n| series | scored frames | neuralforecast LSTM: test RMSE | MAE | trained (s) |")
    print("|---|---|---|---|---|")
    for r in reports:
        print(f"| {r['series']} | {r['scored']} | {r['rmse_series_units']:.4g} | "
              f"{r['mae_series_units']:.4g} | {r['train_seconds']} |")
    return reports


if __name__ == "__main__":
    main()
