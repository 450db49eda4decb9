"""Sequence classification (single sentences or pairs; multi-class or multi-label) and regression.

kind='classification': softmax cross-entropy; metrics accuracy, precision/recall/F1 (micro, macro,
weighted), MCC, ROC-AUC for two classes, GLUE's metric for GLUE tasks; a per-class report and a
confusion-matrix PNG at the final evaluation. kind='multilabel': a sigmoid per label (a row's
label is a list, or a '|'-separated string in CSV). kind='regression': one output, squared error;
Pearson and Spearman. Every kind also reports `loss`, the training objective's per row, so that
loss.png shows the eval loss beside the train loss.
"""
import json
import logging
import os

import numpy as np

from research import objectives as objectives_lib
from research.errors import UserError
from research.evaluate import classification as metrics_lib
from research.data import cache as data_cache
from research.data import encoding
from research.tasks.base import EvalSplit, Task

log = logging.getLogger(__name__)
OBJECTIVES = {"classification": objectives_lib.classification,
              "multilabel": objectives_lib.multilabel, "regression": objectives_lib.regression}
KINDS = tuple(OBJECTIVES)


def label_names(kind: str, train_rows: list[dict], task: str = "") -> list[str]:
  """The classes, from the training rows: texts sorted, integers in numeric order.

  Integers that are not 0..K-1 (e.g. {0, 7}, or 1-based {1, 2}) are names like any other: the
  head has one output per class seen (not max + 1), and a warning line says so."""
  check_labels(kind, train_rows, "train", task)
  if kind == "regression":
    return ["score"]
  if kind == "multilabel":
    return sorted({str(l) for r in train_rows for l in _label_list(r["label"])})
  values = sorted({r["label"] for r in train_rows})
  where = f"task {task!r}: " if task else ""
  if len(values) < 2:
    raise UserError(f"{where}the train split has one class ({values[0]!r}); classification "
                    "needs at least 2")
  if isinstance(values[0], int) and values != list(range(len(values))):
    log.warning("%sinteger labels %s are not 0..%d: they are class names, ids 0..%d in that order",
                where, values, len(values) - 1, len(values) - 1)
  return [str(v) for v in values]


def _label_type(value) -> str | None:
  """'text' or 'integer' (what a class label may be), else None (a bool, a float, a list...)."""
  if isinstance(value, str):
    return "text"
  return "integer" if isinstance(value, int) and not isinstance(value, bool) else None


def check_labels(kind: str, rows: list[dict], split: str, task: str = ""):
  """Every row has a label, and a class label is text or an integer, all of one type: a null
  would be class 'None', and 1 and '1' two classes of the same name."""
  where = f"task {task!r}, {split} split" if task else f"{split} split"
  first = {}
  for n, row in enumerate(rows, 1):
    label = row["label"]
    if label is None:
      raise UserError(f"{where}: row {n} has no label (null)")
    if kind != "classification":
      continue
    kind_of = _label_type(label)
    if kind_of is None:
      raise UserError(f"{where}: row {n}'s label {label!r} is neither text nor an integer")
    first.setdefault(kind_of, (n, label))
  if len(first) > 1:
    (n, a), (m, b) = first["integer"], first["text"]
    raise UserError(f"{where}: labels mix integers and text (row {n}: {a!r}, row {m}: {b!r}); "
                    "write every label the same way")


def _label_list(value):
  return value if isinstance(value, list) else [v for v in str(value).split("|") if v]


def encode_labels(kind: str, names: list[str], rows: list[dict], split: str, task: str):
  check_labels(kind, rows, split, task)
  index = {n: i for i, n in enumerate(names)}
  if kind == "regression":
    try:
      return np.asarray([float(r["label"]) for r in rows], np.float32)
    except (TypeError, ValueError) as e:
      raise UserError(f"task {task!r}, {split} split: regression labels must be numbers ({e})") from None
  if kind == "multilabel":
    out = np.zeros((len(rows), len(names)), np.float32)
    for i, r in enumerate(rows):
      for label in _label_list(r["label"]):
        if str(label) not in index:
          raise UserError(f"task {task!r}, {split} split: label {label!r} never occurs in training")
        out[i, index[str(label)]] = 1.0
    return out
  unseen = sorted({str(r["label"]) for r in rows} - set(index))
  if unseen:
    raise UserError(f"task {task!r}, {split} split: label(s) {unseen} never occur in training; "
                    f"training labels: {names}")
  return np.asarray([index[str(r["label"])] for r in rows], np.int32)


def mean_loss(kind: str, logits, labels) -> float:
  """The training objective's loss per row (research/objectives/classification.py), on the host:
  the eval loss that loss.png plots beside the train loss."""
  logits = np.asarray(logits, np.float64)
  if kind == "regression":
    return float(np.mean(np.square(logits[:, 0] - labels)))
  if kind == "multilabel":  # sigmoid cross-entropy, the mean over labels
    losses = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return float(losses.mean())
  top = logits.max(-1, keepdims=True)
  log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
  return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


class ClassificationTask(Task):
  final_splits = ("test", "eval")

  def setup(self, name, task_cfg, head, names):
    self.name, self.kind, self.head, self.names = name, task_cfg["kind"], head, names
    source = task_cfg["source"]
    self.glue = source[5:] if source.startswith("glue/") else None
    self.heads = (f"{head}=classification:{len(names)}",)
    self.objectives = (OBJECTIVES[self.kind](name, head),)
    self.labels = {"kind": self.kind, "head": head, "names": list(names)}
    return self

  def __init__(self, name, task_cfg, rows, tokenizer, config, head, names=None):
    self.setup(name, task_cfg, head, names or label_names(task_cfg.kind, rows["train"], name))
    seq_len, batch = config.data.seq_len, config.train.batch_size
    self.stats = {}
    features, cache = {}, data_cache.of_config(config)
    for split, split_rows in rows.items():
      encoded, truncated = encoding.encode_texts(tokenizer, split_rows, seq_len, cache)
      labels = encode_labels(self.kind, self.names, split_rows, split, name)
      features[split] = [dict(f, label=l) for f, l in zip(encoded, labels)]
      self.stats[f"data/{split}_rows"] = len(split_rows)
      self.stats[f"data/{split}_truncated"] = truncated
      if truncated:
        log.warning("task %s, %s split: %d of %d texts longer than %d tokens were truncated",
                    name, split, truncated, len(split_rows), seq_len)
    self.train_size = len(rows["train"])
    self.train_features = features["train"]  # what replay (research/continual) draws from
    self.train = encoding.train_batches(features["train"], config)
    self.splits = {s: EvalSplit(f, batch, **encoding.host_info()) for s, f in features.items()
                   if s != "train"}
    self.references = {s: np.stack([f["label"] for f in feats]) for s, feats in features.items()}

  def eval_outputs(self, outputs, batch):
    return {"logits": outputs[f"{self.head}_logits"]}

  def scores(self, logits):
    """Host-side: (predictions, probabilities) from logits."""
    if self.kind == "regression":
      return logits[:, 0], None
    if self.kind == "multilabel":
      probs = 1 / (1 + np.exp(-logits))
      return (probs > 0.5).astype(np.int32), probs
    # On the host, in numpy: jax here would compile five small programs per batch shape.
    logits = np.asarray(logits, np.float32)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probs = shifted / shifted.sum(-1, keepdims=True)
    return logits.argmax(-1), probs

  def evaluate(self, split, context) -> dict:
    report_dir = context.report_dir
    logits = self.splits[split].gather(context)["logits"]
    labels = self.references[split]
    predictions, probs = self.scores(logits)
    if self.kind == "regression":
      result = metrics_lib.regression_metrics(labels, predictions)
    elif self.kind == "multilabel":
      result = metrics_lib.multilabel_metrics(labels, predictions)
    else:
      result = metrics_lib.classification_metrics(
          labels, predictions, probs if len(self.names) == 2 else None, self.names)
    if self.glue:
      result.update(metrics_lib.glue_metrics(self.glue, labels, predictions))
    result["loss"] = mean_loss(self.kind, logits, labels)
    if report_dir and self.kind == "classification":
      self._report(split, labels, predictions, report_dir)
    return {f"{split}/{self.name}/{k}": v for k, v in result.items()}

  def _report(self, split, labels, predictions, report_dir):
    os.makedirs(report_dir, exist_ok=True)
    report = metrics_lib.per_class_report(labels, predictions, self.names)
    log.info("%s %s per-class report:\n%s", split, self.name, metrics_lib.format_report(report))
    base = os.path.join(report_dir, f"{split}_{self.name}")
    with open(base + "_report.json", "w") as f:
      json.dump(report, f, indent=2)
    metrics_lib.confusion_matrix_png(labels, predictions, self.names, base + "_confusion.png",
                                     title=f"{self.name} ({split})")

  # --- Inference on new rows (research.predict). ---
  def predict_features(self, rows, tokenizer, seq_len):
    features, _ = encoding.encode_texts(tokenizer, rows, seq_len)
    return features, None

  def predict_rows(self, outputs: dict, rows, meta) -> list[dict]:
    predictions, probs = self.scores(outputs["logits"])
    out = []
    for i in range(len(rows)):
      if self.kind == "regression":
        out.append({"score": float(predictions[i])})
      elif self.kind == "multilabel":
        out.append({"labels": [n for j, n in enumerate(self.names) if predictions[i, j]],
                    "scores": {n: float(probs[i, j]) for j, n in enumerate(self.names)}})
      else:
        out.append({"label": self.names[int(predictions[i])], "score": float(probs[i].max()),
                    "scores": {n: float(probs[i, j]) for j, n in enumerate(self.names)}})
    return out
