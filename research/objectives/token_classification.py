"""Token classification (NER): cross-entropy where a token carries a label (not IGNORE = -100)."""
from research.objectives.base import Objective, cross_entropy_sums, row_weights

IGNORE = -100  # the label of tokens without one: sub-tokens after a word's first, specials, padding


def _weights(batch):
  return row_weights(batch, (batch["labels"] != IGNORE).astype("float32"))


def token_classification(name: str, head: str) -> Objective:
  predictions = lambda outputs, batch: (outputs[f"{head}_logits"], _weights(batch))
  return Objective(name, lambda batch: _weights(batch).sum(),
                   lambda outputs, batch: cross_entropy_sums(
                       outputs[f"{head}_logits"], batch["labels"], _weights(batch)),
                   predictions=predictions)
