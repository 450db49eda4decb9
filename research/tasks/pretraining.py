"""Pretraining as a task: masked LM (+ NSP/SOP) or causal LM on a text corpus.

Its objectives, and so the model heads, follow from `config.objective`; evaluation sums each
objective's (sum, count) pairs over the eval split and divides once.
"""
import numpy as np

from research import data as data_lib
from research import objectives as objectives_lib
from research.tasks.base import EvalContext, Task


class PretrainingTask(Task):
  """`config.objective` over `config.data`."""

  def __init__(self, config, workdir: str):
    data = data_lib.build(config, workdir)
    self.name = config.objective.name
    self.objectives, self.heads = objectives_lib.pretraining(config.objective)
    self.train, self.tokenizer, self.stats = data.train, data.tokenizer, data.stats
    self.train_size = data.stats["data/train_rows"]
    self.splits = {"eval": (data.eval, data.eval_steps)}

  def eval_outputs(self, outputs, batch):
    return objectives_lib.eval_sums(self.objectives, outputs, batch)

  def evaluate(self, split: str, context: EvalContext) -> dict:
    batches, steps = self.splits[split]
    totals = {}
    for sums in context.run(batches, steps):
      for k, (s, c) in sums.items():
        total = totals.get(k, (0.0, 0.0))
        totals[k] = (total[0] + float(s), total[1] + float(c))
    out = {f"{split}/{k}": s / max(c, 1.0) for k, (s, c) in totals.items()}
    for prefix in objectives_lib.NAMES:
      if f"{split}/{prefix}/loss" in out:
        out[f"{split}/{prefix}/perplexity"] = float(np.exp(min(out[f"{split}/{prefix}/loss"], 50.0)))
    return out
