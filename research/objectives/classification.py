"""Sequence-level objectives of fine-tuning: classes, several labels at once, or a score.

Each reads '<head>_logits' (batch, outputs) and the batch's 'label'; one prediction per row.
"""
import jax.numpy as jnp
import optax

from research.objectives.base import Objective, cross_entropy_sums, row_weights


def _rows(batch):
  return row_weights(batch, jnp.ones(batch["label"].shape[:1], jnp.float32))


def _count(batch):
  return _rows(batch).sum()


def classification(name: str, head: str) -> Objective:
  """Softmax cross-entropy over integer labels; accuracy."""
  predictions = lambda outputs, batch: (outputs[f"{head}_logits"], _rows(batch))
  return Objective(name, _count, lambda outputs, batch: cross_entropy_sums(
      outputs[f"{head}_logits"], batch["label"], _rows(batch)), predictions=predictions)


def multilabel(name: str, head: str) -> Objective:
  """A sigmoid per label against 0/1 targets (batch, labels); the loss is the mean over labels."""
  def sums(outputs, batch):
    losses = optax.sigmoid_binary_cross_entropy(outputs[f"{head}_logits"], batch["label"])
    return {"loss": (losses.mean(-1) * _rows(batch)).sum()}
  return Objective(name, _count, sums)


def regression(name: str, head: str) -> Objective:
  """Squared error of the first output against a float label."""
  def sums(outputs, batch):
    errors = jnp.square(outputs[f"{head}_logits"][:, 0] - batch["label"])
    return {"loss": (errors * _rows(batch)).sum()}
  return Objective(name, _count, sums)
