"""A real series, one-step-ahead prediction, from data shipped by statsmodels.

The data come with the ``statsmodels`` package (installed separately:
``pip install statsmodels``), so no download happens:

``co2``       weekly atmospheric CO2 at Mauna Loa, 1958-2001 (2284 weeks;
              the 59 missing weeks are filled by linear interpolation).
``sunspots``  yearly sunspot numbers, 1700-2008 (309 years).

The series is split by time: the first ``1 - dev - test`` fraction is for
training, the next ``dev`` fraction for dev, the last ``test`` fraction for
test (the one pair that would straddle two splits is dropped). Every split
is cut into consecutive sequences whose lengths are drawn uniformly over the
integers in [min_len, max_len] (seeded; the last sequence of a split takes
what is left and may be shorter). In a sequence of t frames, input = value
at frame i, target = value at frame i + 1 (no NaN targets).

``--transform change`` writes the series of week-to-week (year-to-year)
changes instead of the levels: a trending series such as co2 leaves the
training range in the test split, where a net with bounded units cannot
follow it, while its changes stay in range. The target is then the next
change; a level forecast is the last level plus it.

All values are normalised with the training split's statistics,
``z = (x - mean) / std``. The dataset root holds ``mean.matrix`` and
``std.matrix``: one float32 ('<f4') each, the same for input and target, so
a prediction maps back to the series as ``x = z * std + mean``.

Input [t][1], target [t][1].

Example
-------
>>> import numpy as np
>>> stats, items = sequences(np.random.default_rng(0), np.arange(100.0), 5, 9)
>>> split, input_tj, target_tk, time_t = next(items)
>>> split, bool(np.allclose(input_tj[1:], target_tk[:-1]))
('train', True)
"""
from __future__ import annotations

import numpy as np

from .common import sequence_path

SUMMARY = "a real series (statsmodels' co2 or sunspots), one-step-ahead targets"
SERIES = ("co2", "sunspots")
TRANSFORMS = ("level", "change")
PACKAGE = "statsmodels"


class MissingPackageError(RuntimeError):
    """The package that ships the data is not installed."""


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--series", choices=SERIES, default="co2",
                        help="co2 (weekly, default) or sunspots (yearly)")
    parser.add_argument("--transform", choices=TRANSFORMS, default="level",
                        help="level (the values, default) or change (differences of consecutive values)")
    parser.add_argument("--min-len", type=int, default=20,
                        help="shortest sequence, in frames; default 20")
    parser.add_argument("--max-len", type=int, default=60,
                        help="longest sequence, in frames; default 60")
    parser.add_argument("--dev-fraction", type=float, default=0.15,
                        help="fraction of the series for dev (after train); default 0.15")
    parser.add_argument("--test-fraction", type=float, default=0.15,
                        help="fraction of the series for test (the end); default 0.15")


def load_series(name):
    """Return the series `name` as a 1-D float64 array, without gaps.

    Raises
    ------
    MissingPackageError
        If statsmodels is not installed.
    ValueError
        On an unknown series name.
    """
    if name not in SERIES:
        raise ValueError(f"series must be one of {SERIES}, got {name!r}")
    try:
        from statsmodels import datasets as sm_datasets
    except ImportError as error:
        raise MissingPackageError(
            f"the 'real' task reads data shipped with the {PACKAGE} package, which is "
            f"not installed; install it with: pip install {PACKAGE}") from error
    if name == "co2":
        values = sm_datasets.co2.load_pandas().data["co2"].to_numpy(dtype=np.float64)
    else:
        values = sm_datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    return _fill_gaps(values)


def sequences(rng, values_t, min_len=20, max_len=60, dev_fraction=0.15, test_fraction=0.15):
    """Split, normalise and cut a series into one-step-ahead sequences.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the sequence lengths.
    values_t : array_like, shape [t]
        The series, finite.
    min_len, max_len : int
        Range of sequence lengths in frames (1 <= min_len <= max_len).
    dev_fraction, test_fraction : float
        Fractions of the series for dev and test, each in [0, 1), sum < 1.

    Returns
    -------
    stats : tuple of float
        ``(mean, std)`` of the training split.
    items : iterator
        Of ``(split, input_tj, target_tk, None)``, train first, in time order.

    Raises
    ------
    ValueError
        On bad options, or a training split too short to cut a sequence.
    """
    values_t = np.asarray(values_t, dtype=np.float64)
    _check_options(values_t, min_len, max_len, dev_fraction, test_fraction)
    n_values = len(values_t)
    n_test = int(round(n_values * test_fraction))
    n_dev = int(round(n_values * dev_fraction))
    n_train = n_values - n_dev - n_test
    if n_train < 2:
        raise ValueError(f"the training split has {n_train} values; it needs at least 2")
    mean = float(values_t[:n_train].mean())
    std = float(values_t[:n_train].std()) or 1.0
    z_t = (values_t - mean) / std
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev),
              "test": (n_train + n_dev, n_values)}
    return (mean, std), _items(rng, z_t, bounds, min_len, max_len)


def _items(rng, z_t, bounds, min_len, max_len):
    for split, (begin, end) in bounds.items():
        start = begin
        while end - start >= 2:  # a sequence of L frames needs L + 1 values
            n_frames = min(int(rng.integers(min_len, max_len + 1)), end - start - 1)
            chunk = z_t[start:start + n_frames + 1, None].astype(np.float32)
            yield split, chunk[:-1], chunk[1:], None
            start += n_frames


def _check_options(values_t, min_len, max_len, dev_fraction, test_fraction):
    if values_t.ndim != 1 or not np.isfinite(values_t).all():
        raise ValueError("the series must be one-dimensional and finite")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    fractions_ok = 0 <= dev_fraction < 1 and 0 <= test_fraction < 1
    if not fractions_ok or dev_fraction + test_fraction >= 1:
        raise ValueError("dev and test fractions must be in [0, 1) with a sum below 1, "
                         f"got {dev_fraction}, {test_fraction}")


def _fill_gaps(values_t):
    """Linearly interpolate NaN values (the ends take the nearest value)."""
    known = np.isfinite(values_t)
    if known.all():
        return values_t
    index = np.arange(len(values_t))
    return np.interp(index, index[known], values_t[known])


def write_dataset(writer, rng, series="co2", transform="level", min_len=20, max_len=60,
                  dev_fraction=0.15, test_fraction=0.15):
    """Load `series`, write its sequences and ``mean.matrix``/``std.matrix``.

    Parameters
    ----------
    writer : sophia.data.writer.DatasetWriter
        Side effect: receives every sequence and the two statistics files.
    rng : numpy.random.Generator
    series, min_len, max_len, dev_fraction, test_fraction
        As for :func:`load_series` and :func:`sequences`.
    transform : str
        ``level`` writes the values, ``change`` the differences of consecutive values.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    values_t = load_series(series)
    if transform == "change":
        values_t = np.diff(values_t)
    (mean, std), items = sequences(rng, values_t, min_len, max_len, dev_fraction, test_fraction)
    counts = {}
    for split, input_tj, target_tk, time_t in items:
        index = counts[split] = counts.get(split, -1) + 1
        writer.add(split, sequence_path(split, index), input_tj, target_tk, time_t)
    writer.write_array("mean.matrix", [mean])
    writer.write_array("std.matrix", [std])
