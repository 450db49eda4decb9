"""Masked-LM loss over the fixed number of predicted positions per sequence."""
import jax.numpy as jnp
import optax

from research.objectives.baseline import unigram_hits


def masked_lm_loss(outputs, batch):
  """Cross-entropy of 'mlm_logits' against batch['masked_ids'] where batch['masked_weights'] > 0.

  Metrics, as (sum, count) over predicted tokens: loss, accuracy, and unigram_accuracy: the
  accuracy of always predicting batch['unigram_top'] (the most frequent training token), the
  baseline a model has to beat.
  """
  logits = outputs["mlm_logits"]
  labels, weights = batch["masked_ids"], batch["masked_weights"].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  count = weights.sum()
  correct = (logits.argmax(-1) == labels) * weights
  loss_sum = (losses * weights).sum()
  return loss_sum / jnp.maximum(count, 1.0), {
      "loss": (loss_sum, count), "accuracy": (correct.sum(), count),
      "unigram_accuracy": (unigram_hits(batch, labels, weights), count)}
