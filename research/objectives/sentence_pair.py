"""Sentence-pair classification (NSP or SOP): two classes on the pooled output."""
from research.objectives.base import Objective, cross_entropy_sums, row_weights


def _weights(batch):
  return row_weights(batch, batch["attention_mask"][:, 0].astype("float32"))  # rows with an example


def sentence_pair(name: str, weight: float = 1.0) -> Objective:
  """Cross-entropy of 'sentence_pair_logits' against batch['sentence_label'] (0 or 1)."""
  return Objective(
      name, lambda batch: _weights(batch).sum(),
      lambda outputs, batch: cross_entropy_sums(outputs["sentence_pair_logits"],
                                                batch["sentence_label"], _weights(batch)),
      weight)
