"""Targets against predictions for the first few sequences, as a PNG (matplotlib, optional).

- :func:`require_matplotlib` -- raise :class:`~sophia.evaluation.EvalError` naming
  the extra to install when matplotlib is missing.
- :func:`plot_predictions` -- one panel per sequence, the first target element, with
  the model's interval as a shaded band where it has one, and its tracked interval as
  dashed lines.
"""
from __future__ import annotations

from sophia.atomic import atomic_write
from sophia.evaluation import EvalError

INSTALL_HINT = "pip install -e '.[plot]'"


def require_matplotlib() -> None:
    """Raise :class:`EvalError` if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EvalError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def plot_predictions(path, names, targets, predictions, count: int = 3, bands=None,
                     tracked=None) -> int:
    """Draw target element 0 and each method's prediction for the first ``count`` sequences.

    Parameters
    ----------
    path : str or PathLike
        The PNG; replaced atomically.
    names : list of str
        Each sequence's name (its relative path).
    targets : list of ndarray [T][k]
    predictions : dict of str to list of ndarray [T][k]
        Each method's predictions, sequence by sequence (``"model"`` first).
    bands : list of (ndarray [T][k], ndarray [T][k]), optional
        The model's interval (lower, upper) per sequence, drawn shaded.
    tracked : list of (ndarray [T][k], ndarray [T][k]), optional
        The tracked interval per sequence (:mod:`sophia.evaluation.tracking`), drawn
        as dashed lines.

    Returns the number of panels drawn. Raises :class:`EvalError` without matplotlib.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = min(count, len(targets))
    fig = Figure(figsize=(9, 2.6 * max(panels, 1)))
    canvas = FigureCanvasAgg(fig)
    for n in range(panels):
        ax = fig.add_subplot(max(panels, 1), 1, n + 1)
        if bands is not None:
            lower_tk, upper_tk = bands[n]
            ax.fill_between(range(len(lower_tk)), lower_tk[:, 0], upper_tk[:, 0], color="C0",
                            alpha=0.2, linewidth=0, label="model interval")
        if tracked is not None:
            lower_tk, upper_tk = tracked[n]
            ax.plot(lower_tk[:, 0], "--", color="C0", linewidth=0.8, label="tracked interval")
            ax.plot(upper_tk[:, 0], "--", color="C0", linewidth=0.8)
        ax.plot(targets[n][:, 0], "k.", markersize=3, label="target")
        for method, outputs in predictions.items():
            ax.plot(outputs[n][:, 0], linewidth=1.2 if method == "model" else 0.8,
                    alpha=1.0 if method == "model" else 0.7, label=method)
        ax.set_title(names[n], fontsize=9)
        ax.set_xlabel("frame")
        if n == 0:
            ax.legend(fontsize=7, ncol=len(predictions) + 1)
    fig.tight_layout()
    atomic_write(path, lambda f: canvas.print_png(f))
    return panels
