"""Objectives: every loss the library trains, in one home, as `Objective`s (see `base`).

An objective is `count(batch)` and `sums(outputs, batch)`; the train step divides once by the
global count (`loss_and_sums`), so accumulation and sharding give the full-batch result.
`pretraining(config.objective)` gives the objectives a pretraining config asks for and the model
heads they read; fine-tuning tasks build theirs from `classification`, `token_classification`,
`span` and `completion_lm`.
"""
from research.errors import UserError
from research.objectives.base import (Objective, Regularizer, counts, cross_entropy_sums,
                                      eval_sums, loss_and_sums, row_weights)
from research.objectives.causal_lm import (causal_lm, completion_lm, completion_sums_per_row,
                                            completion_weights)
from research.objectives.classification import classification, multilabel, regression
from research.objectives.masked_lm import masked_lm, max_predictions
from research.objectives.sentence_pair import sentence_pair
from research.objectives.span import span
from research.objectives.token_classification import token_classification

NAMES = ("mlm", "clm")
SENTENCE_TASKS = ("none", "nsp", "sop")


def pretraining(objective_cfg) -> tuple[tuple, tuple]:
  """(objectives, head specs) for `config.objective`: the heads follow from the objectives."""
  name = objective_cfg.name
  if name not in NAMES:
    raise UserError(f"objective.name must be one of {list(NAMES)}, got {name!r}")
  if name == "clm":
    return (causal_lm(),), ("lm",)
  task = objective_cfg.sentence_task
  if task not in SENTENCE_TASKS:
    raise UserError(f"objective.sentence_task must be one of {list(SENTENCE_TASKS)}, got {task!r}")
  if task == "none":
    return (masked_lm(),), ("mlm",)
  return (masked_lm(), sentence_pair(task, objective_cfg.sentence_task_weight)), \
      ("mlm", "sentence_pair")


__all__ = ["Objective", "Regularizer", "counts", "cross_entropy_sums", "eval_sums", "loss_and_sums", "row_weights",
           "causal_lm", "completion_lm", "completion_sums_per_row", "completion_weights",
           "classification", "multilabel", "regression", "masked_lm",
           "max_predictions", "sentence_pair", "span", "token_classification", "pretraining"]
