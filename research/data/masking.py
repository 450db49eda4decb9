"""BERT's masked-LM corruption of a batch of rows, on the host.

Of each row's maskable tokens (not [CLS]/[SEP]/[PAD]), `rate` (15%) are chosen, at least one and
at most `max_predictions`; of those 80% become [MASK], 10% a random regular (non-special) token
from `regular_ids`, 10% stay as they are. The random draws are keyed by (seed, example index), so
the corruption of a row does not depend on which batch or host builds it.
"""
import numpy as np

from research.data import keyed_random

# Streams of keyed_random draws used here; the example builder uses others.
CHOOSE, ACTION, REPLACEMENT = 0, 1, 2


def mask_tokens(input_ids: np.ndarray, maskable: np.ndarray, seed: int, rows: np.ndarray, *,
                rate: float, max_predictions: int, mask_id: int, regular_ids: np.ndarray) -> dict:
  """Corrupts `input_ids` (batch, seq) and returns fixed-size masked_positions/ids/weights.

  `rows` are the examples' global indices (the random key). Positions are sorted per row; unused
  prediction slots hold position 0, id 0, weight 0.
  """
  batch, seq = input_ids.shape
  candidates = maskable.sum(1)
  num = np.where(candidates > 0,
                 np.clip(np.round(candidates * rate).astype(np.int64), 1, max_predictions), 0)
  # A uniformly random subset of `num` candidates: the `num` smallest random scores.
  scores = np.where(maskable, keyed_random.uniform(seed, rows, CHOOSE, seq), 2.0)
  width = min(max_predictions, seq)
  chosen = np.argsort(scores, axis=1, kind="stable")[:, :width]
  used = np.arange(width)[None, :] < num[:, None]
  positions = np.sort(np.where(used, chosen, seq), axis=1)  # used slots first, ascending
  used = positions < seq
  positions = np.where(used, positions, 0)
  row_index = np.arange(batch)[:, None]
  original = np.where(used, input_ids[row_index, positions], 0)
  action = keyed_random.uniform(seed, rows, ACTION, width)
  random_tokens = regular_ids[keyed_random.integers(seed, rows, REPLACEMENT, width,
                                                    len(regular_ids))]
  new = np.where(action < 0.8, mask_id, np.where(action < 0.9, random_tokens, original))
  corrupted = input_ids.copy()
  corrupted[np.broadcast_to(row_index, positions.shape)[used], positions[used]] = new[used]

  def pad(x, dtype):
    out = np.zeros((batch, max_predictions), dtype)
    out[:, :width] = x
    return out
  return {"input_ids": corrupted, "masked_positions": pad(positions, np.int32),
          "masked_ids": pad(original, np.int32), "masked_weights": pad(used, np.float32)}
