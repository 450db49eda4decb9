"""Pretraining as a task: masked LM (+ NSP/SOP) or causal LM on a text corpus."""
import numpy as np

from research import data as data_lib
from research import objectives as objectives_lib
from research.tasks.base import Runner, Task


class PretrainingTask(Task):
  """`config.objective` over `config.data`; evaluated by summed loss/accuracy on the eval split."""

  def __init__(self, config, workdir: str, tokenizer=None):
    data = data_lib.build(config, workdir, tokenizer)
    self.name = config.objective.name
    self.objectives = objectives_lib.build(config.objective)
    self.train, self.tokenizer, self.stats = data.train, data.tokenizer, data.stats
    self.splits = {"eval": (data.eval, data.eval_steps)}

  def loss(self, outputs, batch):
    return objectives_lib.combined_loss(self.objectives, outputs, batch)

  def eval_outputs(self, outputs, batch):
    return self.loss(outputs, batch)[1]

  def evaluate(self, split: str, run: Runner, report_dir=None) -> dict:
    batches, steps = self.splits[split]
    totals = {}
    for sums in run(batches, steps):
      for k, (s, c) in sums.items():
        total = totals.get(k, (0.0, 0.0))
        totals[k] = (total[0] + float(s), total[1] + float(c))
    out = {f"{split}/{k}": s / max(c, 1.0) for k, (s, c) in totals.items()}
    for prefix in ("mlm", "clm"):
      if f"{split}/{prefix}/loss" in out:
        out[f"{split}/{prefix}/perplexity"] = float(np.exp(min(out[f"{split}/{prefix}/loss"], 50.0)))
    return out
