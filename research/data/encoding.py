"""Shared pieces of the fine-tuning tasks: text (pair) encoding and training batches."""
import grain
import jax
import numpy as np

from research.data.pipeline import StackedRows, StepIndexedBatches
from research.data.tokenizer import SpecialIds


def host_info() -> dict:
  return dict(process_index=jax.process_index(), process_count=jax.process_count())


def encode_texts(tokenizer, rows: list[dict], seq_len: int):
  """[CLS] text [SEP] (text_pair [SEP]) rows of `seq_len`, longest-first truncation.

  Returns (features, number of rows that were truncated).
  """
  s = SpecialIds.of(tokenizer)
  texts = tokenizer.encode_batch_fast([r["text"] for r in rows], add_special_tokens=False)
  pairs = [r.get("text_pair") for r in rows]
  pair_ids = dict(zip([i for i, p in enumerate(pairs) if p], tokenizer.encode_batch_fast(
      [p for p in pairs if p], add_special_tokens=False)))
  features, truncated = [], 0
  for i, encoded in enumerate(texts):
    a, b = list(encoded.ids), list(pair_ids[i].ids) if i in pair_ids else None
    budget = seq_len - (3 if b is not None else 2)
    if len(a) + len(b or []) > budget:
      truncated += 1
      while len(a) + len(b or []) > budget:  # longest first
        (a if b is None or len(a) >= len(b) else b).pop()
    ids = [s.cls] + a + [s.sep] + ((b + [s.sep]) if b is not None else [])
    types = [0] * (len(a) + 2) + ([1] * (len(b) + 1) if b is not None else [])
    features.append(pad({"input_ids": ids, "token_type_ids": types,
                         "attention_mask": [1] * len(ids)}, seq_len, s.pad))
  return features, truncated


def pad(feature: dict, seq_len: int, pad_id: int) -> dict:
  out = {}
  for k, v in feature.items():
    array = np.full(seq_len, pad_id if k == "input_ids" else 0, np.int32)
    array[:len(v)] = v
    out[k] = array
  return out


def train_batches(features: list[dict], config, batch_size: int | None = None) -> StepIndexedBatches:
  """Infinite, shuffled (a new order each epoch), step-indexed training batches of `batch_size`
  rows (default `train.batch_size`)."""
  examples = grain.MapDataset.source(features).shuffle(seed=config.train.seed).repeat(None)
  return StepIndexedBatches(StackedRows(examples), batch_size or config.train.batch_size,
                            **host_info())
