"""Extractive question answering, SQuAD v1.1 and v2.0 style.

Long contexts are split into windows overlapping by `doc_stride` tokens; the loss is the mean of
the start and end cross-entropies; evaluation maps the n-best spans of all of an example's
windows back to exact character offsets (`research.data.qa.postprocess`) and scores them with the
official SQuAD exact match and F1 (plus HasAns/NoAns for v2.0).
"""
import logging

from research import objectives as objectives_lib
from research.data import qa
from research.data.tokenizer import with_pair_template
from research.evaluate import squad
from research.data import encoding
from research.tasks.base import EvalSplit, Task

log = logging.getLogger(__name__)
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class QuestionAnsweringTask(Task):
  final_splits = ("test", "eval")

  def setup(self, name, task_cfg, head, names):
    self.name, self.kind, self.head, self.names = name, "qa", head, names or []
    self.settings = dict(doc_stride=task_cfg.get("doc_stride", 128),
                         max_question_len=task_cfg.get("max_question_len", 64))
    self.post = dict(n_best=task_cfg.get("n_best", 20),
                     max_answer_len=task_cfg.get("max_answer_len", 30),
                     version_2=task_cfg["source"] == "squad_v2" or task_cfg.get("version_2", False),
                     null_threshold=task_cfg.get("null_threshold", 0.0))
    self.heads = (f"{head}=span",)
    self.objectives = (objectives_lib.span(name, head),)
    self.labels = {"kind": self.kind, "head": head, "names": list(self.names)}
    return self

  def __init__(self, name, task_cfg, rows, tokenizer, config, head, names=None):
    self.setup(name, task_cfg, head, names)
    self.tokenizer = with_pair_template(tokenizer)
    seq_len, batch = config.data.seq_len, config.train.batch_size
    self.stats, self.examples, self.windows = {}, {}, {}
    train_features = None
    for split, split_rows in rows.items():
      features, spans, stats = qa.prepare_features(split_rows, self.tokenizer, seq_len,
                                                   **self.settings)
      for key in ("answers_not_in_context", "truncated_questions"):
        self.stats[f"data/{split}_{key}"] = stats[key]
      if stats["skipped"]:
        log.warning("task %s, %s split: %d answers do not occur at their answer_start in the "
                    "context; %d examples skipped", name, split, stats["answers_not_in_context"],
                    stats["skipped"])
      self.stats[f"data/{split}_rows"] = len(split_rows)
      self.stats[f"data/{split}_windows"] = stats["features"]
      keys = TOKEN_KEYS + ("start_positions", "end_positions")
      rows_f = [{k: features[k][i] for k in keys} for i in range(stats["features"])]
      if split == "train":
        train_features = rows_f
      else:
        self.examples[split] = split_rows
        self.windows[split] = (features, spans, rows_f)
    self.train_size = len(train_features)
    self.train = encoding.train_batches(train_features, config)
    self.splits = {s: EvalSplit(w[2], batch, **encoding.host_info()) for s, w in self.windows.items()}

  def eval_outputs(self, outputs, batch):
    return {"start": outputs[f"{self.head}_start_logits"], "end": outputs[f"{self.head}_end_logits"]}

  def evaluate(self, split, context) -> dict:
    logits = self.splits[split].gather(context)
    features, spans, _ = self.windows[split]
    answers = qa.postprocess(self.examples[split], features, spans, logits["start"],
                             logits["end"], **self.post)
    predictions = {e["id"]: answers.get(e["id"], {"text": ""})["text"] for e in self.examples[split]}
    references = {e["id"]: e["answers"]["text"] for e in self.examples[split]}
    result = squad.squad_metrics(predictions, references)
    return {f"{split}/{self.name}/{k}": v for k, v in result.items()}

  # --- Inference on new rows: {'question', 'context'[, 'id']}. ---
  def predict_features(self, rows, tokenizer, seq_len):
    examples = [{"id": str(r.get("id", i)), "question": r["question"], "context": r["context"],
                 "answers": {"text": [], "answer_start": []}} for i, r in enumerate(rows)]
    features, spans, stats = qa.prepare_features(examples, with_pair_template(tokenizer), seq_len,
                                                 **self.settings)
    rows_f = [{k: features[k][i] for k in TOKEN_KEYS} for i in range(stats["features"])]
    return rows_f, (examples, features, spans)

  def predict_rows(self, outputs, rows, meta) -> list[dict]:
    examples, features, spans = meta
    answers = qa.postprocess(examples, features, spans, outputs["start"], outputs["end"], **self.post)
    out = []
    for e in examples:
      a = answers.get(e["id"], {"text": "", "start": -1, "end": -1, "score": float("-inf")})
      out.append({"id": e["id"], "answer": a["text"], "start": int(a["start"]),
                  "end": int(a["end"]), "score": float(a["score"])})
    return out
