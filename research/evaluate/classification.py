"""Classification, multi-label and regression metrics, and GLUE's official metric per task.

Computed in numpy from counts, under fixed names that are logged as `eval/<task>/<metric>`, and
checked against scikit-learn and scipy on random inputs, ties included (tests/test_metrics.py).
Not scikit-learn itself: importing it (with the pandas and scipy it brings) took 1.3 s of every
fine-tuning command's start-up. Precision, recall and F1 of a class that is never predicted (or
never present) count as 0, as scikit-learn's `zero_division=0` counts them, without a warning.
"""
import os

import numpy as np

from research.errors import UserError


def _ratio(numerator, denominator):
  """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _counts(labels, predictions, classes):
  """Per class of `classes`: (true positives, times predicted, times present)."""
  labels, predictions = np.asarray(labels)[:, None], np.asarray(predictions)[:, None]
  hits = (labels == classes) & (predictions == classes)
  return hits.sum(0), (predictions == classes).sum(0), (labels == classes).sum(0)


def _precision_recall_f1(true_positives, predicted, present):
  return (_ratio(true_positives, predicted), _ratio(true_positives, present),
          _ratio(2 * true_positives, predicted + present))


def _averaged(true_positives, predicted, present, average):
  """(precision, recall, f1) averaged over classes: 'micro' pools the counts, 'macro' takes the
  plain mean of the classes' scores, 'weighted' their mean weighted by each class's support."""
  if average == "micro":
    return _precision_recall_f1(true_positives.sum(), predicted.sum(), present.sum())
  scores = _precision_recall_f1(true_positives, predicted, present)
  if average == "macro":
    return tuple(score.mean() for score in scores)
  if present.sum() == 0:
    return 0.0, 0.0, 0.0
  return tuple(np.average(score, weights=present) for score in scores)


def confusion_matrix(labels, predictions, num_classes):
  """counts[i, j]: examples of true class i predicted as class j, for classes 0..num_classes-1."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
  return counts


def matthews_corrcoef(labels, predictions) -> float:
  """The multiclass Matthews correlation (Gorodkin's R_K) over the classes seen in either input;
  0.0 where it is undefined (all labels or all predictions one class)."""
  _, inverse = np.unique(np.concatenate([np.ravel(labels), np.ravel(predictions)]),
                         return_inverse=True)
  n = len(np.ravel(labels))
  counts = confusion_matrix(inverse[:n], inverse[n:], inverse.max() + 1).astype(float)
  true_sum, predicted_sum = counts.sum(1), counts.sum(0)
  covariance = np.trace(counts) * n - true_sum @ predicted_sum
  variance = (n * n - predicted_sum @ predicted_sum) * (n * n - true_sum @ true_sum)
  return 0.0 if variance == 0 else float(covariance / np.sqrt(variance))


def average_ranks(values):
  """Ranks 1..n of `values`, tied values sharing the mean of their ranks."""
  values = np.ravel(values)
  order = np.argsort(values, kind="stable")
  ordered = values[order]
  starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
  ends = np.r_[starts[1:], len(values)]
  group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
  ranks = np.empty(len(values))
  ranks[order] = ((starts + 1 + ends) / 2)[group]
  return ranks


def roc_auc(labels, scores) -> float:
  """The area under the ROC curve of binary `labels` (0/1) ranked by `scores`: the chance that
  a positive outranks a negative, a tie counting one half (the Mann-Whitney U statistic)."""
  labels = np.ravel(labels).astype(bool)
  positives, negatives = labels.sum(), (~labels).sum()
  rank_sum = average_ranks(scores)[labels].sum()
  return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def pearson(x, y) -> float:
  x, y = np.ravel(x).astype(float), np.ravel(y).astype(float)
  x, y = x - x.mean(), y - y.mean()
  return float(np.clip(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), -1.0, 1.0))


def spearman(x, y) -> float:
  return pearson(average_ranks(x), average_ranks(y))


def classification_metrics(labels, predictions, probabilities=None, label_names=None) -> dict:
  """Accuracy, micro/macro/weighted precision, recall and F1, and Matthews correlation ('mcc').

  `label_names`, when given, fixes the classes to 0..len(label_names)-1, so that the macro
  average also counts classes absent from this split. `probabilities` (n, 2) of a binary task
  add 'roc_auc' (of class 1); it is left out when the labels hold a single class, where it is
  undefined.
  """
  labels, predictions = np.ravel(labels), np.ravel(predictions)
  classes = (np.union1d(labels, predictions) if label_names is None
             else np.arange(len(label_names)))
  counts = _counts(labels, predictions, classes)
  result = {"accuracy": np.mean(labels == predictions)}
  for average in ("micro", "macro", "weighted"):
    p, r, f = _averaged(*counts, average)
    result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
  result["mcc"] = matthews_corrcoef(labels, predictions)
  if probabilities is not None:
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(labels), 2):
      raise ValueError(f"probabilities must have shape ({len(labels)}, 2) for 'roc_auc', "
                       f"got {probabilities.shape}")
    if len(np.unique(labels)) == 2:
      result["roc_auc"] = roc_auc(labels, probabilities[:, 1])
  return {k: float(v) for k, v in result.items()}


def per_class_report(labels, predictions, label_names) -> dict:
  """{name: {'precision', 'recall', 'f1', 'support'}} for classes 0..len(label_names)-1."""
  true_positives, predicted, support = _counts(labels, predictions, np.arange(len(label_names)))
  p, r, f = _precision_recall_f1(true_positives, predicted, support)
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
  matrix = confusion_matrix(labels, predictions, len(label_names))
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
  y, p = np.asarray(label_matrix).astype(bool), np.asarray(prediction_matrix).astype(bool)
  counts = (y & p).sum(0), p.sum(0), y.sum(0)  # per label, as `_counts` gives per class
  return {"f1_micro": float(_averaged(*counts, "micro")[2]),
          "f1_macro": float(_averaged(*counts, "macro")[2]),
          "exact_match": float(np.mean((y == p).all(1))),
          "hamming_loss": float(np.mean(y != p))}


def _correlation(fn, labels, predictions) -> float:
  """The correlation `fn` (pearson, spearman), or 0.0 where it is undefined (either input
  constant)."""
  labels, predictions = np.ravel(labels), np.ravel(predictions)
  if np.ptp(labels) == 0 or np.ptp(predictions) == 0:
    return 0.0
  return fn(labels, predictions)


def regression_metrics(labels, predictions) -> dict:
  """Pearson and Spearman correlation, mean squared and mean absolute error.

  A correlation is undefined when either input is constant (e.g. a collapsed model predicting
  one value); it is then reported as 0.0 rather than nan, so logs and averages stay numeric.
  Predictions of shape (n, 1) are flattened.
  """
  labels, predictions = np.ravel(labels), np.ravel(predictions)
  return {"pearson": _correlation(pearson, labels, predictions),
          "spearman": _correlation(spearman, labels, predictions),
          "mse": float(np.mean((labels - predictions) ** 2)),
          "mae": float(np.mean(np.abs(labels - predictions)))}


GLUE_METRICS = {
    "cola": ("mcc",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearman"), "mnli": ("accuracy",),
    "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
}

_GLUE_FNS = {
    "accuracy": lambda y, p: np.mean(y == p),
    "f1": lambda y, p: _precision_recall_f1(*_counts(y, p, np.array([1])))[2][0],  # of class 1
    "mcc": matthews_corrcoef,
    "pearson": lambda y, p: _correlation(pearson, y, p),
    "spearman": lambda y, p: _correlation(spearman, y, p),
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
