"""Sentence-pair classification loss (NSP or SOP): two classes on the pooled output."""
import jax.numpy as jnp
import optax


def sentence_pair_loss(outputs, batch):
  """Cross-entropy of 'sentence_pair_logits' against batch['sentence_label'] (0 or 1)."""
  logits, labels = outputs["sentence_pair_logits"], batch["sentence_label"]
  weights = batch["attention_mask"][:, 0].astype(jnp.float32)  # rows that hold an example
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  count = weights.sum()
  loss_sum = (losses * weights).sum()
  correct = ((logits.argmax(-1) == labels) * weights).sum()
  return loss_sum / jnp.maximum(count, 1.0), {
      "loss": (loss_sum, count), "accuracy": (correct, count)}
