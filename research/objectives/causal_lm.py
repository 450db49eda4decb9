"""Next-token loss for packed sequences; never predicts across a document boundary."""
import jax.numpy as jnp
import optax

from research.objectives.baseline import unigram_hits


def causal_lm_loss(outputs, batch):
  """Position t predicts token t+1 when both belong to the same (non-padding) segment.

  Without `segment_ids` a row is one document: its real tokens (`attention_mask`, else all).

  Metrics, as (sum, count) over predicted tokens: loss, accuracy, and unigram_accuracy: the
  accuracy of always predicting batch['unigram_top'] (the most frequent training token), the
  baseline a model has to beat.
  """
  logits = outputs["lm_logits"][:, :-1]
  labels = batch["input_ids"][:, 1:]
  seg = batch.get("segment_ids")
  if seg is None:
    seg = batch.get("attention_mask", jnp.ones_like(batch["input_ids"]))
  weights = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  count = weights.sum()
  loss_sum = (losses * weights).sum()
  correct = ((logits.argmax(-1) == labels) * weights).sum()
  return loss_sum / jnp.maximum(count, 1.0), {
      "loss": (loss_sum, count), "accuracy": (correct, count),
      "unigram_accuracy": (unigram_hits(batch, labels, weights), count)}
