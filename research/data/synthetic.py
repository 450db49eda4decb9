"""Synthetic batches: random token ids, and for masked-LM their targets, at a model's shapes, to
time or compile a step without a corpus (research.bench and bench_cpu, research.memory)."""
import numpy as np


def batch(kind: str, rows: int, seq_len: int, num_predictions: int, vocab_size: int,
          seed: int = 0) -> dict:
  """`rows` rows of `seq_len` token ids below `vocab_size`, no padding; for an encoder also
  `num_predictions` masked positions per row and their ids (a decoder's targets are its ids)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(min(1000, vocab_size // 2), vocab_size - 1, (rows, seq_len), dtype=np.int32)
  out = {"input_ids": ids, "unigram_top": np.zeros(rows, np.int32)}  # no padding: no mask
  if kind == "encoder":
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq_len - 1), num_predictions,
                                             replace=False) for _ in range(rows)]), 1)
    out.update(token_type_ids=np.zeros_like(ids), masked_positions=positions.astype(np.int32),
               masked_ids=np.take_along_axis(ids, positions, 1),
               masked_weights=np.ones(positions.shape, np.float32))
  return out  # decoder rows: one document each (no segment_ids)
