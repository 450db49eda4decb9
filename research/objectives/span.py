"""Extractive QA: the mean of the start and end cross-entropies over the real tokens."""
import jax.numpy as jnp
import optax

from research.objectives.base import Objective, row_weights


def _rows(batch):
  return row_weights(batch, jnp.ones(batch["start_positions"].shape[:1], jnp.float32))


def span(name: str, head: str) -> Objective:
  def sums(outputs, batch):
    mask = batch["attention_mask"] > 0
    start = jnp.where(mask, outputs[f"{head}_start_logits"], -1e9)
    end = jnp.where(mask, outputs[f"{head}_end_logits"], -1e9)
    losses = (optax.softmax_cross_entropy_with_integer_labels(start, batch["start_positions"]) +
              optax.softmax_cross_entropy_with_integer_labels(end, batch["end_positions"])) / 2
    return {"loss": (losses * _rows(batch)).sum()}
  return Objective(name, lambda batch: _rows(batch).sum(), sums)
