"""``sophia-eval``: one evaluation of a trained workspace for everything.

The model runs over whole sequences through the serving step, so its outputs are
the server's; it is scored beside simple baselines on exactly the same target
values (docs/EVALUATION.md).

- :mod:`sophia.evaluation.inference` -- offline inference through
  :meth:`~sophia.serving.model.ModelSession.step`.
- :mod:`sophia.evaluation.whole` -- offline inference over whole sequences, for
  bidirectional models (which cannot run frame by frame, and the server refuses).
- :mod:`sophia.evaluation.baselines` -- mean, persistence, seasonal naive, AR(p):
  small pure functions of the targets.
- :mod:`sophia.evaluation.classical` -- ETS and ARIMA through statsmodels (optional),
  chosen on the dev split.
- :mod:`sophia.evaluation.metrics` -- RMSE, MAE, MASE, largest error, count wrong.
- :mod:`sophia.evaluation.probabilistic` -- NLL or pinball loss, and interval
  coverage, of gaussian and quantile models.
- :mod:`sophia.evaluation.ensemble` -- several workspaces' outputs combined into one
  (an ensemble's forecast, by output layout).
- :mod:`sophia.evaluation.evaluate` -- :func:`~sophia.evaluation.evaluate.evaluate`:
  all of it, and the ``.output`` files, ``report.json`` and table it writes.
- :mod:`sophia.evaluation.plot` -- targets against predictions, as a PNG.
- :mod:`sophia.evaluation.cli` -- the command line.
- :class:`EvalError` -- bad input; the message names the file or field.

Example
-------
>>> from sophia.evaluation.evaluate import evaluate                 # doctest: +SKIP
>>> report = evaluate("runs/co2", "data/co2", "test", out="runs/co2/eval")  # doctest: +SKIP
>>> report["overall"]["model"]["rmse"] < report["overall"]["persistence"]["rmse"]  # doctest: +SKIP
True
"""


class EvalError(ValueError):
    """An evaluation that cannot run: the message names the file or field at fault."""
