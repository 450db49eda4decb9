"""The objective contract, the one weighted cross-entropy, and the exact division by counts.

An `Objective` is a loss term a task trains on, in two pure parts:
  count(batch) -> scalar           how many predictions the batch holds (its label weights'
                                   sum): a function of the batch alone, never of the model
  sums(outputs, batch) -> dict     per-metric sums over those predictions; 'loss' is required
  predictions(outputs, batch)      optional: (logits, weights) of what the objective predicts
                                   as classes, for soft targets (distillation) to read
The step computes every objective's count over the whole global batch first, then the loss
  sum over objectives of weight * sums['loss'] / count(global batch),
so a microbatch contributes its share of the full-batch mean: gradient accumulation and any
sharding give the full-batch loss and gradients (not a mean of per-microbatch means), whatever
number of predictions each microbatch holds. Metrics stay (sum, count) pairs and are divided once,
after summing over microbatches, devices and evaluation batches.
"""
import dataclasses
from typing import Callable

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str  # metric prefix: 'mlm', 'nsp', 'clm', or a fine-tuning task's name
  count: Callable  # batch -> scalar
  sums: Callable  # (outputs, batch) -> {'loss': scalar, ...}
  weight: float = 1.0
  predictions: Callable | None = None  # (outputs, batch) -> (logits (..., classes), weights (...))


def row_weights(batch, weights):
  """`weights` (batch, ...) with the rows an evaluation pass pads with (row_mask 0) zeroed."""
  if "row_mask" not in batch:
    return weights
  mask = batch["row_mask"].astype(jnp.float32)
  return weights * mask.reshape(mask.shape + (1,) * (weights.ndim - 1))


def cross_entropy_sums(logits, labels, weights) -> dict:
  """The one cross-entropy: weighted sums of the loss and of correct argmax predictions.

  `logits` (..., classes) in float32, integer `labels` (...), `weights` (...) with 0 where there
  is nothing to predict (a label there may be anything, e.g. -100: it is clipped, not read).
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  correct = logits.argmax(-1) == labels
  return {"loss": (losses * weights).sum(), "accuracy": (correct * weights).sum()}


def counts(objectives, batch) -> dict:
  return {o.name: o.count(batch) for o in objectives}


def loss_and_sums(objectives, outputs, batch, global_counts: dict):
  """(loss, {'<name>/<metric>': (sum, count)}) with the loss divided by the global counts.

  `batch` may be a microbatch of the one `global_counts` was computed on.
  """
  loss, sums = 0.0, {}
  for o in objectives:
    terms, count = o.sums(outputs, batch), o.count(batch)
    loss = loss + o.weight * terms["loss"] / jnp.maximum(global_counts[o.name], 1.0)
    sums.update({f"{o.name}/{k}": (v, count) for k, v in terms.items()})
  return loss, sums


def eval_sums(objectives, outputs, batch) -> dict:
  """An eval batch's {'<name>/<metric>': (sum, count)}: `loss_and_sums` over its own counts."""
  return loss_and_sums(objectives, outputs, batch, counts(objectives, batch))[1]


def unigram_hits(batch, labels, weights):
  """How many weighted labels equal the most frequent training token (batch['unigram_top'])."""
  return ((labels == batch["unigram_top"][:, None]) * weights).sum()


@dataclasses.dataclass(frozen=True)
class Regularizer:
  """A loss term of the parameters alone, added once per step (e.g. a continual-learning
  penalty pulling parameters towards an earlier task's); reported as 'train/<name>'. A training
  feature's (research/train/feature.py): `fn(params, inputs)`, `inputs` being what the feature's
  `step_inputs` put on the mesh (an anchor, a Fisher diagonal; None when it puts nothing), an
  argument of the jitted step: never baked into the compiled program, never checkpointed."""
  name: str
  fn: Callable  # (params, inputs) -> scalar
