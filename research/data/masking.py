"""BERT's masked-LM corruption, on the host, with a caller-provided random generator.

Of the maskable tokens (not [CLS]/[SEP]/[PAD]), `rate` (15%) are chosen, capped at
`max_predictions`; of those 80% become [MASK], 10% a random regular (non-special) token from
`regular_ids`, 10% stay as they are.
The generator comes from the pipeline, seeded by (seed, example index), so the corruption is a
pure function of (seed, step, position in batch).
"""
import numpy as np


def mask_tokens(input_ids: np.ndarray, maskable: np.ndarray, rng: np.random.Generator, *,
                rate: float, max_predictions: int, mask_id: int, regular_ids: np.ndarray) -> dict:
  """Returns the corrupted `input_ids` and fixed-size masked_positions/ids/weights."""
  candidates = np.flatnonzero(maskable)
  num = min(max_predictions, max(1, int(round(len(candidates) * rate)))) if len(candidates) else 0
  positions = np.sort(rng.choice(candidates, size=num, replace=False)) if num else candidates[:0]
  corrupted = input_ids.copy()
  action = rng.random(num)
  random_tokens = regular_ids[rng.integers(len(regular_ids), size=num)]
  corrupted[positions] = np.where(action < 0.8, mask_id,
                                  np.where(action < 0.9, random_tokens, input_ids[positions]))
  out_positions = np.zeros(max_predictions, np.int32)
  out_ids = np.zeros(max_predictions, np.int32)
  weights = np.zeros(max_predictions, np.float32)
  out_positions[:num], out_ids[:num], weights[:num] = positions, input_ids[positions], 1.0
  return {"input_ids": corrupted, "masked_positions": out_positions, "masked_ids": out_ids,
          "masked_weights": weights}
