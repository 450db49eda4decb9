"""Next-token prediction for packed sequences; never predicts across a document boundary.

`causal_lm` predicts every next token (pretraining); `completion_lm` only the tokens a batch's
`loss_mask` marks (generative fine-tuning: the completion and its EOS, not the prompt).
"""
import jax
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


def completion_weights(batch):
  """(batch, length - 1): position t predicts token t+1 when t+1 is in the loss mask (and in the
  same segment as t)."""
  return _weights(batch) * batch["loss_mask"][:, 1:].astype(jnp.float32)


def completion_sums_per_row(outputs, batch) -> dict:
  """`cross_entropy_sums` of each row (batch,) over its completion tokens, and their 'tokens'."""
  weights = completion_weights(batch)
  sums = jax.vmap(cross_entropy_sums)(outputs["lm_logits"][:, :-1], batch["input_ids"][:, 1:],
                                      weights)
  return dict(sums, tokens=weights.sum(-1))


def completion_lm(name: str, weight: float = 1.0) -> Objective:
  """Cross-entropy of the completion tokens only (`completion_weights`); accuracy."""
  return Objective(name, lambda batch: completion_weights(batch).sum(),
                   lambda outputs, batch: cross_entropy_sums(
                       outputs["lm_logits"][:, :-1], batch["input_ids"][:, 1:],
                       completion_weights(batch)), weight)
