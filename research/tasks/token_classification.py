"""Token classification (NER) with IOB2 tags: the first sub-token of each word carries its label.

Metrics: entity-level precision/recall/F1 overall and per type (conlleval-compatible, and
'strict/...' IOB2), token accuracy. Prediction on raw text returns entities with character spans.
"""
import logging

import jax.numpy as jnp

from research import objectives as objectives_lib
from research.data import ner
from research.errors import UserError
from research.evaluate import entities as entities_lib
from research.data import encoding
from research.tasks.base import EvalSplit, Task

log = logging.getLogger(__name__)


def tag_names(train_rows) -> list[str]:
  tags = sorted({t for r in train_rows for t in r["tags"]} - {"O"})
  return ["O"] + tags


class TokenClassificationTask(Task):
  final_splits = ("test", "eval")

  def setup(self, name, task_cfg, head, names):
    self.name, self.kind, self.head, self.names = name, "token_classification", head, names
    self.heads = (f"{head}=token_classification:{len(names)}",)
    self.objectives = (objectives_lib.token_classification(name, head),)
    self.labels = {"kind": self.kind, "head": head, "names": list(names)}
    return self

  def __init__(self, name, task_cfg, rows, tokenizer, config, head, names=None):
    self.setup(name, task_cfg, head, names or tag_names(rows["train"]))
    index = {t: i for i, t in enumerate(self.names)}
    seq_len, batch = config.data.seq_len, config.train.batch_size
    self.stats, features, self.word_index, self.references = {}, {}, {}, {}
    for split, split_rows in rows.items():
      unseen = sorted({t for r in split_rows for t in r["tags"]} - set(index))
      if unseen:
        raise UserError(f"task {name!r}, {split} split: tag(s) {unseen} never occur in training")
      encoded = [ner.encode_words(tokenizer, r["words"], seq_len, [index[t] for t in r["tags"]])
                 for r in split_rows]
      truncated = sum(e["truncated_words"] > 0 for e in encoded)
      if truncated:
        log.warning("task %s, %s split: %d of %d sentences longer than %d tokens were truncated",
                    name, split, truncated, len(split_rows), seq_len)
      self.stats[f"data/{split}_rows"] = len(split_rows)
      self.stats[f"data/{split}_truncated"] = int(truncated)
      features[split] = [{k: e[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
                         for e in encoded]
      self.word_index[split] = [e["word_index"] for e in encoded]
      self.references[split] = [list(r["tags"]) for r in split_rows]
    self.train_size = len(rows["train"])
    self.train = encoding.train_batches(features["train"], config)
    self.splits = {s: EvalSplit(f, batch, **encoding.host_info()) for s, f in features.items()
                   if s != "train"}

  def eval_outputs(self, outputs, batch):
    return {"predictions": outputs[f"{self.head}_logits"].argmax(-1).astype(jnp.int32)}

  def word_tags(self, token_predictions, word_index, num_words):
    ids = ner.word_predictions(token_predictions, word_index, num_words, fill=0)
    return [self.names[i] for i in ids]

  def evaluate(self, split, context) -> dict:
    predictions = self.splits[split].gather(context)["predictions"]
    truth = self.references[split]
    predicted = [self.word_tags(p, w, len(t)) for p, w, t in
                 zip(predictions, self.word_index[split], truth)]
    result = entities_lib.entity_metrics(truth, predicted, mode="conlleval")
    strict = entities_lib.entity_metrics(truth, predicted, mode="strict")
    result.update({f"strict/{k}": strict[k] for k in ("precision", "recall", "f1")})
    return {f"{split}/{self.name}/{k}": v for k, v in result.items()}

  # --- Inference on new rows: {'text': raw text} or {'words': [...]}. ---
  def predict_features(self, rows, tokenizer, seq_len):
    features, meta = [], []
    for r in rows:
      if "words" in r:
        words, offsets = list(r["words"]), None
      else:
        offsets = ner.words_with_offsets(r["text"])
        words = [w for w, _, _ in offsets]
      e = ner.encode_words(tokenizer, words, seq_len)
      features.append({k: e[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
      meta.append((words, offsets, e["word_index"]))
    return features, meta

  def predict_rows(self, outputs, rows, meta) -> list[dict]:
    out = []
    for r, p, (words, offsets, word_index) in zip(rows, outputs["predictions"], meta):
      tags = self.word_tags(p, word_index, len(words))
      if offsets is None:
        out.append({"words": words, "tags": tags})
      else:
        out.append({"tags": tags, "entities": ner.entity_spans(offsets, tags, r["text"])})
    return out
