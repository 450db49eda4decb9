"""Masked-LM: cross-entropy over the fixed number of predicted positions per sequence."""
import math

from research.errors import UserError
from research.objectives.base import Objective, cross_entropy_sums, row_weights, unigram_hits


def _weights(batch):
  return row_weights(batch, batch["masked_weights"].astype("float32"))


def _sums(outputs, batch):
  """'mlm_logits' against batch['masked_ids'] where batch['masked_weights'] > 0; also
  unigram_accuracy: always predicting batch['unigram_top'] (the most frequent training token),
  the baseline a model has to beat."""
  weights = _weights(batch)
  sums = cross_entropy_sums(outputs["mlm_logits"], batch["masked_ids"], weights)
  sums["unigram_accuracy"] = unigram_hits(batch, batch["masked_ids"], weights)
  return sums


def _predictions(outputs, batch):
  return outputs["mlm_logits"], _weights(batch)


def masked_lm(name: str = "mlm", weight: float = 1.0) -> Objective:
  return Objective(name, lambda batch: _weights(batch).sum(), _sums, weight, _predictions)


def max_predictions(objective_cfg, seq_len: int) -> int:
  """Prediction slots per row: `max_predictions = -1` derives ceil(mask_rate x seq_len), so the
  configured share of tokens is predicted at any sequence length. A smaller explicit value that
  would cut that share is refused rather than applied silently."""
  rate, given = objective_cfg.mask_rate, objective_cfg.max_predictions
  needed = math.ceil(rate * seq_len)
  if given == -1:
    return needed
  if given < round(rate * (seq_len - 2)):
    raise UserError(
        f"objective.max_predictions ({given}) would predict only {given / seq_len:.1%} of "
        f"data.seq_len ({seq_len}) tokens, not objective.mask_rate ({rate}); set it to -1 "
        f"(derived: {needed}) or at least {needed}")
  return given
