"""The `Task` interface the trainer drives (through a `TaskSet`), and evaluation splits.

A task declares everything the loop needs and nothing the loop must ask about:
  name          metric prefix ('mlm', 'bbc_news', ...)
  heads         the model head specs it reads ('mlm', 'classification=classification:5', ...)
  objectives    its loss terms (`research.objectives.Objective`), jitted into the train step
  train         infinite, step-indexed training batches (`StepIndexedBatches`)
  train_size    distinct training rows (weights the multi-task mixture)
  splits        evaluation splits by name ('eval', 'test'), whatever the task keeps per split
  stats         data statistics for the summary
  labels        what `labels.json` saves of it for `research.predict` (None: nothing)
  final_splits  splits evaluated once more at the end with the final (best) parameters, writing
                reports; 'test' results go to the summary
  eval_outputs(outputs, batch)   what evaluation keeps of the model's outputs (jitted)
  evaluate(split, context)       host-side metrics of a split: {'<split>/<name>/<metric>': v}
`EvalContext` is what the trainer hands to `evaluate`: a runner of the jitted eval step over a
split's batches, the parameters, the model config, mesh and axis rules (a generation-based evaluation decodes
with them: `research.generate`), and where reports go.
"""
import dataclasses
import math
from typing import Any, Callable, Iterator

import grain
import numpy as np

from research.data.pipeline import StackedRows, StepIndexedBatches


@dataclasses.dataclass
class EvalContext:
  # run(batches, num_steps) -> iterator of each batch's eval_outputs on the host (numpy, every
  # host's rows gathered): the trainer's jitted eval step on its mesh.
  run: Callable[[StepIndexedBatches, int], Iterator]
  params: Any = None
  report_dir: str | None = None
  model_cfg: Any = None  # research.models.ModelConfig of the run
  mesh: Any = None  # the run's jax.sharding.Mesh
  rules: tuple | None = None  # its logical axis rules


class Task:
  """Base class: subclasses set the attributes above and implement the two methods."""
  name: str
  heads: tuple = ()
  objectives: tuple = ()
  train: StepIndexedBatches
  train_size: int = 1
  splits: dict = {}
  stats: dict = {}
  labels: dict | None = None
  final_splits: tuple = ()

  def eval_outputs(self, outputs, batch):
    raise NotImplementedError

  def evaluate(self, split: str, context: EvalContext) -> dict:
    raise NotImplementedError


class EvalSplit:
  """A fixed, ordered evaluation split: rows padded to whole batches, the same every time."""

  def __init__(self, features: list[dict], batch_size: int, *, process_index=0, process_count=1,
               extra=None):
    if not features:
      raise ValueError("an evaluation split needs at least one example")
    self.size = len(features)
    self.steps = math.ceil(self.size / batch_size)
    padded = features + [features[-1]] * (self.steps * batch_size - self.size)
    self.batches = StepIndexedBatches(StackedRows(grain.MapDataset.source(padded)), batch_size,
                                      process_index=process_index, process_count=process_count,
                                      extra=extra)

  def gather(self, context: EvalContext) -> dict:
    """Concatenates the per-batch outputs over the split, cut to its real rows."""
    parts = list(context.run(self.batches, self.steps))
    return {k: np.concatenate([p[k] for p in parts])[:self.size] for k in parts[0]}
