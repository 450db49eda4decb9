"""Classification, multi-label and regression metrics, and GLUE's official metric per task.

Thin wrappers over scikit-learn and scipy that return python floats under fixed names, so that
they can be logged as `eval/<task>/<metric>`. Precision, recall and F1 of a class that is never
predicted (or never present) count as 0, without a warning.
"""
import os

import numpy as np

from research.errors import UserError


def metrics():
  """scikit-learn's `metrics`, imported at its first use: with pandas, which comes with it, and
  scipy's `stats`, about a second of every command's start-up, which a run that computes no such
  metric (pretraining, bad input) need not pay."""
  import sklearn.metrics  # pylint: disable=g-import-not-at-top
  return sklearn.metrics


def stats():
  """scipy's `stats`, imported at its first use (see `metrics`)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  return scipy.stats


def classification_metrics(labels, predictions, probabilities=None, label_names=None) -> dict:
  """Accuracy, micro/macro/weighted precision, recall and F1, and Matthews correlation ('mcc').

  `label_names`, when given, fixes the classes to 0..len(label_names)-1, so that the macro
  average also counts classes absent from this split. `probabilities` (n, 2) of a binary task
  add 'roc_auc' (of class 1); it is left out when the labels hold a single class, where it is
  undefined.
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  classes = None if label_names is None else np.arange(len(label_names))
  result = {"accuracy": metrics().accuracy_score(labels, predictions)}
  for average in ("micro", "macro", "weighted"):
    p, r, f, _ = metrics().precision_recall_fscore_support(
        labels, predictions, labels=classes, average=average, zero_division=0)
    result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
  result["mcc"] = metrics().matthews_corrcoef(labels, predictions)
  if probabilities is not None:
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(labels), 2):
      raise ValueError(f"probabilities must have shape ({len(labels)}, 2) for 'roc_auc', "
                       f"got {probabilities.shape}")
    if len(np.unique(labels)) == 2:
      result["roc_auc"] = metrics().roc_auc_score(labels, probabilities[:, 1])
  return {k: float(v) for k, v in result.items()}


def per_class_report(labels, predictions, label_names) -> dict:
  """{name: {'precision', 'recall', 'f1', 'support'}} for classes 0..len(label_names)-1."""
  p, r, f, support = metrics().precision_recall_fscore_support(
      labels, predictions, labels=np.arange(len(label_names)), average=None, zero_division=0)
  return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                 "support": int(support[i])} for i, name in enumerate(label_names)}


def format_report(report: dict) -> str:
  """`per_class_report`'s output as an aligned text table, one class a line."""
  width = max(len("class"), *(len(str(name)) for name in report))
  lines = [f"{'class':<{width}}  precision     recall         f1    support"]
  for name, row in report.items():
    lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:9.4f}  "
                 f"{row['f1']:9.4f}  {row['support']:9d}")
  return "\n".join(lines)


def confusion_matrix_png(labels, predictions, label_names, path, title="Confusion matrix"):
  """Draws the confusion matrix (rows: true class, columns: predicted) to a PNG at `path`.

  Returns the matrix as a nested list of counts. Uses matplotlib's Agg canvas directly, so it
  works without a display and leaves pyplot's global state alone.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  matrix = metrics().confusion_matrix(labels, predictions, labels=np.arange(len(label_names)))
  size = 2.5 + 0.6 * len(label_names)
  fig = Figure(figsize=(size, size))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.imshow(matrix, cmap="Blues")
  ticks = np.arange(len(label_names))
  ax.set_xticks(ticks, labels=label_names, rotation=45, ha="right")
  ax.set_yticks(ticks, labels=label_names)
  ax.set(xlabel="Predicted", ylabel="True", title=title)
  for (i, j), count in np.ndenumerate(matrix):
    ax.text(j, i, str(count), ha="center", va="center",
            color="white" if count > matrix.max() / 2 else "black")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return matrix.tolist()


def multilabel_metrics(label_matrix, prediction_matrix) -> dict:
  """Micro and macro F1, 'exact_match' (all of a row's labels right) and 'hamming_loss'.

  Both inputs are 0/1 matrices of shape (examples, labels).
  """
  y, p = np.asarray(label_matrix), np.asarray(prediction_matrix)
  return {"f1_micro": float(metrics().f1_score(y, p, average="micro", zero_division=0)),
          "f1_macro": float(metrics().f1_score(y, p, average="macro", zero_division=0)),
          "exact_match": float(metrics().accuracy_score(y, p)),
          "hamming_loss": float(metrics().hamming_loss(y, p))}


def _correlation(fn, labels, predictions) -> float:
  """scipy's correlation `fn`, or 0.0 where it is undefined (either input constant)."""
  labels, predictions = np.ravel(labels), np.ravel(predictions)
  if np.ptp(labels) == 0 or np.ptp(predictions) == 0:
    return 0.0
  return float(fn(labels, predictions)[0])


def regression_metrics(labels, predictions) -> dict:
  """Pearson and Spearman correlation, mean squared and mean absolute error.

  A correlation is undefined when either input is constant (e.g. a collapsed model predicting
  one value); it is then reported as 0.0 rather than nan, so logs and averages stay numeric.
  Predictions of shape (n, 1) are flattened.
  """
  labels, predictions = np.ravel(labels), np.ravel(predictions)
  return {"pearson": _correlation(stats().pearsonr, labels, predictions),
          "spearman": _correlation(stats().spearmanr, labels, predictions),
          "mse": float(metrics().mean_squared_error(labels, predictions)),
          "mae": float(metrics().mean_absolute_error(labels, predictions))}


GLUE_METRICS = {
    "cola": ("mcc",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearman"), "mnli": ("accuracy",),
    "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
}

_GLUE_FNS = {
    "accuracy": lambda y, p: metrics().accuracy_score(y, p),
    "f1": lambda y, p: metrics().f1_score(y, p, pos_label=1, zero_division=0),  # of class 1
    "mcc": lambda y, p: metrics().matthews_corrcoef(y, p),
    "pearson": lambda y, p: _correlation(stats().pearsonr, y, p),
    "spearman": lambda y, p: _correlation(stats().spearmanr, y, p),
}


def glue_metrics(task: str, labels, predictions) -> dict:
  """The GLUE task's official metrics (`GLUE_METRICS`), and 'score': their mean.

  'score' is the single number the GLUE leaderboard reports for the task (e.g. MRPC: the mean
  of accuracy and F1). Predictions are class ids, or scores for 'stsb'.
  """
  if task not in GLUE_METRICS:
    raise UserError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_METRICS)}")
  labels, predictions = np.ravel(labels), np.ravel(predictions)
  result = {name: float(_GLUE_FNS[name](labels, predictions)) for name in GLUE_METRICS[task]}
  result["score"] = float(np.mean(list(result.values())))
  return result
