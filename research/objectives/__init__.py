"""Objectives: pure functions `(outputs, batch) -> (loss, metrics)`.

`metrics` maps a name to a (sum, count) pair of scalars, so means stay exact when summed over
microbatches, devices and eval batches: mean = sum(sums) / sum(counts). `loss` is the mean loss
of the batch. `build(objective_cfg)` returns the objectives a config asks for, keyed by the
prefix their metrics are reported under ('mlm', 'nsp', 'sop', 'clm').
"""
from research.errors import UserError
from research.objectives.causal_lm import causal_lm_loss
from research.objectives.masked_lm import masked_lm_loss
from research.objectives.sentence_pair import sentence_pair_loss

SENTENCE_TASKS = ("none", "nsp", "sop")


def build(objective_cfg) -> dict:
  """Returns {metric prefix: (weight, fn)} for `config.objective`."""
  name = objective_cfg.name
  if name == "clm":
    return {"clm": (1.0, causal_lm_loss)}
  if name != "mlm":
    raise UserError(f"objective.name must be 'mlm' or 'clm', got {name!r}")
  objectives = {"mlm": (1.0, masked_lm_loss)}
  task = objective_cfg.sentence_task
  if task not in SENTENCE_TASKS:
    raise UserError(f"objective.sentence_task must be one of {SENTENCE_TASKS}, got {task!r}")
  if task != "none":
    objectives[task] = (objective_cfg.sentence_task_weight, sentence_pair_loss)
  return objectives


def combined_loss(objectives: dict, outputs, batch):
  """Weighted sum of the objectives' losses, and all their metrics under 'prefix/name'."""
  total, metrics = 0.0, {}
  for prefix, (weight, fn) in objectives.items():
    loss, m = fn(outputs, batch)
    total = total + weight * loss
    metrics.update({f"{prefix}/{k}": v for k, v in m.items()})
  return total, metrics
