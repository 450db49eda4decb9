"""The `Task` interface and the evaluation-split helper every fine-tuning task uses."""
import math
from typing import Callable, Iterator

import grain
import numpy as np

from research.data.pipeline import StepIndexedBatches

# run(batches, num_steps) -> iterator of each batch's eval_outputs, on the host (numpy, all hosts'
# rows gathered). Supplied by the trainer, which owns the mesh and the jitted eval step.
Runner = Callable[[StepIndexedBatches, int], Iterator]


class Task:
  """Base class: subclasses set `name`, `train`, `splits` and implement the methods."""
  name: str
  train: StepIndexedBatches  # infinite, shuffled, step-indexed
  splits: dict  # split name ('eval', 'test') -> EvalSplit
  stats: dict = {}

  def loss(self, outputs, batch):
    raise NotImplementedError

  def eval_outputs(self, outputs, batch):
    raise NotImplementedError

  def evaluate(self, split: str, run: Runner, report_dir: str | None = None) -> dict:
    """Metrics of `split` as {'<split>/<task>/<metric>': value}; reports go to report_dir."""
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
    self.batches = StepIndexedBatches(grain.MapDataset.source(padded), batch_size,
                                      process_index=process_index, process_count=process_count,
                                      extra=extra)

  def gather(self, run: Runner) -> dict:
    """Concatenates `run`'s per-batch outputs over the split, cut to its real rows."""
    parts = list(run(self.batches, self.steps))
    return {k: np.concatenate([p[k] for p in parts])[:self.size] for k in parts[0]}
