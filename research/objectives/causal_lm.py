"""Next-token prediction for packed sequences; never predicts across a document boundary."""
import jax.numpy as jnp

from research.objectives.base import Objective, cross_entropy_sums, row_weights, unigram_hits


def _weights(batch):
  """Position t predicts token t+1 when both belong to the same (non-padding) segment.

  Without `segment_ids` a row is one document: its real tokens (`attention_mask`, else all).
  """
  seg = batch.get("segment_ids")
  if seg is None:
    seg = batch.get("attention_mask", jnp.ones_like(batch["input_ids"]))
  return row_weights(batch, ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(jnp.float32))


def _sums(outputs, batch):
  labels, weights = batch["input_ids"][:, 1:], _weights(batch)
  sums = cross_entropy_sums(outputs["lm_logits"][:, :-1], labels, weights)
  sums["unigram_accuracy"] = unigram_hits(batch, labels, weights)
  return sums


def _predictions(outputs, batch):
  return outputs["lm_logits"][:, :-1], _weights(batch)


def causal_lm(name: str = "clm", weight: float = 1.0) -> Objective:
  return Objective(name, lambda batch: _weights(batch).sum(), _sums, weight, _predictions)
