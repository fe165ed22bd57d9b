"""A real series, one-step-ahead prediction, from data shipped inside installed packages.

The data come with a package installed separately (the ``data`` extra,
``pip install -e '.[data]'``); each ships its series as a file or as numbers in
its source, so nothing is downloaded:

============  ===========  ==================================================  ======
series        package      what                                                 values
============  ===========  ==================================================  ======
``co2``       statsmodels  weekly atmospheric CO2 at Mauna Loa, 1958-2001, ppm  2284
                           (the 59 missing weeks linearly interpolated)
``sunspots``  statsmodels  yearly sunspot numbers, 1700-2008                   309
``elnino``    statsmodels  monthly sea surface temperature of the El Nino       732
                           region, 1950-2010, degrees C
``taylor``    pmdarima     half-hourly electricity demand in England and        4032
                           Wales, 5 June - 27 August 2000, MW
``msft``      pmdarima     Microsoft's daily closing share price (adjusted),    7983
                           13 March 1986 - 10 November 2017, USD
============  ===========  ==================================================  ======

The series is split by time: the first ``1 - dev - test`` fraction is for
training, the next ``dev`` fraction for dev, the last ``test`` fraction for
test (the one pair that would straddle two splits is dropped). Every split
is cut into consecutive sequences whose lengths are drawn uniformly over the
integers in [min_len, max_len] (seeded; the last sequence of a split takes
what is left and may be shorter); with ``whole_eval`` the dev and test splits
are each one sequence instead, so a model and the baselines carry their state
and history through the whole split, as one served stream would. In a
sequence of t frames, input = value at frame i, target = value at frame i + 1
(no NaN targets).

``--lags P`` (default 1) widens each input frame to the last P values: frame i
reads [value i, value i - 1, ..., value i - P + 1], the lags an AR(P) model reads,
so the net sees a window as well as its state (a serving client sends the same
P values a frame). Column 0 is still the current value. Lags reach back across
a split's start into the values before it (known history, as the baselines keep
it); the training split's first P - 1 values are read only as lags.

``--transform change`` writes the series of consecutive changes instead of
the levels: a trending series such as co2 leaves the training range in the
test split, where a net with bounded units cannot follow it, while its
changes stay in range. The target is then the next change; a level forecast
is the last level plus it. ``log_change`` writes the changes of the natural
logarithm (for a price, the log return; the series must be positive).

All values are normalised with the training split's statistics,
``z = (x - mean) / std``. The dataset root holds ``mean.matrix`` and
``std.matrix``: one float32 ('<f4') each, the same for input and target, so
a prediction maps back to the series as ``x = z * std + mean``.

Input [t][P] (P = ``lags``, default 1), target [t][1].

Example
-------
>>> import numpy as np
>>> stats, items = sequences(np.random.default_rng(0), np.arange(100.0), 5, 9)
>>> split, input_tj, target_tk, time_t = next(items)
>>> split, bool(np.allclose(input_tj[1:], target_tk[:-1]))
('train', True)
>>> _, items = sequences(np.random.default_rng(0), np.arange(100.0), 5, 9, lags=3)
>>> split, input_tj, target_tk, _ = next(items)
>>> input_tj.shape[1], bool(np.allclose(input_tj[1:, 1:], input_tj[:-1, :-1]))
(3, True)
"""
from __future__ import annotations

import numpy as np

from .common import sequence_path

SUMMARY = "a real series shipped with statsmodels or pmdarima, one-step-ahead targets"
# series -> the package that ships it
PACKAGES = {"co2": "statsmodels", "sunspots": "statsmodels", "elnino": "statsmodels",
            "taylor": "pmdarima", "msft": "pmdarima"}
SERIES = tuple(PACKAGES)
TRANSFORMS = ("level", "change", "log_change")


class MissingPackageError(RuntimeError):
    """The package that ships the data is not installed."""


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--series", choices=SERIES, default="co2",
                        help="co2 (weekly, default), sunspots (yearly), elnino (monthly), "
                             "taylor (half-hourly; pmdarima) or msft (daily; pmdarima)")
    parser.add_argument("--transform", choices=TRANSFORMS, default="level",
                        help="level (the values, default), change (differences of consecutive "
                             "values) or log_change (differences of their logarithms)")
    parser.add_argument("--min-len", type=int, default=20,
                        help="shortest sequence, in frames; default 20")
    parser.add_argument("--max-len", type=int, default=60,
                        help="longest sequence, in frames; default 60")
    parser.add_argument("--dev-fraction", type=float, default=0.15,
                        help="fraction of the series for dev (after train); default 0.15")
    parser.add_argument("--test-fraction", type=float, default=0.15,
                        help="fraction of the series for test (the end); default 0.15")
    parser.add_argument("--whole-eval", action="store_true",
                        help="write the dev and test splits as one sequence each")
    parser.add_argument("--lags", type=int, default=1,
                        help="values an input frame holds: the current one and the P - 1 "
                             "before it (input_dim = P); default 1")


def load_series(name):
    """Return the series `name` as a 1-D float64 array, without gaps.

    Raises
    ------
    MissingPackageError
        If the package that ships it (:data:`PACKAGES`) is not installed.
    ValueError
        On an unknown series name.
    """
    if name not in SERIES:
        raise ValueError(f"series must be one of {SERIES}, got {name!r}")
    package = PACKAGES[name]
    try:
        if package == "statsmodels":
            from statsmodels import datasets as sm_datasets
        else:
            from pmdarima import datasets as pm_datasets
    except ImportError as error:
        raise MissingPackageError(
            f"the 'real' task's series {name!r} is shipped with the {package} package, which "
            f"is not installed; install it with: pip install {package} "
            f"(or pip install -e '.[data]')") from error
    if name == "co2":
        values = sm_datasets.co2.load_pandas().data["co2"]
    elif name == "sunspots":
        values = sm_datasets.sunspots.load_pandas().data["SUNACTIVITY"]
    elif name == "elnino":       # one row a year, one column a month
        values = sm_datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()
    elif name == "taylor":
        values = pm_datasets.load_taylor()
    else:
        values = pm_datasets.load_msft()["Close"]
    return _fill_gaps(np.asarray(values, dtype=np.float64))


def sequences(rng, values_t, min_len=20, max_len=60, dev_fraction=0.15, test_fraction=0.15,
              whole_eval=False, lags=1):
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
    whole_eval : bool
        Write the dev and test splits as one sequence each.
    lags : int
        Values per input frame: the current one and the ``lags - 1`` before it (>= 1).

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
    if lags < 1:
        raise ValueError(f"--lags must be >= 1, got {lags}")
    n_values = len(values_t)
    n_test = int(round(n_values * test_fraction))
    n_dev = int(round(n_values * dev_fraction))
    n_train = n_values - n_dev - n_test
    if n_train < 2:
        raise ValueError(f"the training split has {n_train} values; it needs at least 2")
    mean = float(values_t[:n_train].mean())
    std = float(values_t[:n_train].std()) or 1.0
    z_t = (values_t - mean) / std
    if n_train - (lags - 1) < 2:
        raise ValueError(f"--lags {lags} leaves the {n_train} training values no sequence")
    bounds = {"train": (lags - 1, n_train), "dev": (n_train, n_train + n_dev),
              "test": (n_train + n_dev, n_values)}
    return (mean, std), _items(rng, z_t, bounds, min_len, max_len, whole_eval, lags)


def _items(rng, z_t, bounds, min_len, max_len, whole_eval, lags):
    for split, (begin, end) in bounds.items():
        start = begin
        while end - start >= 2:  # a sequence of L frames needs L + 1 values
            if whole_eval and split != "train":
                n_frames = end - start - 1
            else:
                n_frames = min(int(rng.integers(min_len, max_len + 1)), end - start - 1)
            frame_tj = np.arange(start, start + n_frames)[:, None] - np.arange(lags)[None, :]
            target_t1 = z_t[start + 1:start + n_frames + 1, None]
            yield split, z_t[frame_tj].astype(np.float32), target_t1.astype(np.float32), None
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
                  dev_fraction=0.15, test_fraction=0.15, whole_eval=False, lags=1):
    """Load `series`, write its sequences and ``mean.matrix``/``std.matrix``.

    Parameters
    ----------
    writer : sophia.data.writer.DatasetWriter
        Side effect: receives every sequence and the two statistics files.
    rng : numpy.random.Generator
    series, min_len, max_len, dev_fraction, test_fraction, whole_eval, lags
        As for :func:`load_series` and :func:`sequences`.
    transform : str
        ``level`` writes the values, ``change`` the differences of consecutive
        values, ``log_change`` those of their natural logarithms.

    Raises
    ------
    ValueError
        On bad options, or ``log_change`` of a series that is not positive.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    values_t = load_series(series)
    if transform == "log_change":
        if not (values_t > 0).all():
            raise ValueError(f"transform log_change needs a positive series; {series} is not")
        values_t = np.log(values_t)
    if transform != "level":
        values_t = np.diff(values_t)
    (mean, std), items = sequences(rng, values_t, min_len, max_len, dev_fraction, test_fraction,
                                   whole_eval, lags)
    counts = {}
    for split, input_tj, target_tk, time_t in items:
        index = counts[split] = counts.get(split, -1) + 1
        writer.add(split, sequence_path(split, index), input_tj, target_tk, time_t)
    writer.write_array("mean.matrix", [mean])
    writer.write_array("std.matrix", [std])
