"""Shared pieces of the fine-tuning tasks: text (pair) encoding and training batches."""
import grain
import jax
import numpy as np

from research.data import tokenizer as tokenizer_lib
from research.data.cache import DataCache
from research.data.pipeline import StackedRows, StepIndexedBatches
from research.data.tokenizer import SpecialIds


def host_info() -> dict:
  return dict(process_index=jax.process_index(), process_count=jax.process_count())


def encode_texts(tokenizer, rows: list[dict], seq_len: int, cache: DataCache | None = None):
  """[CLS] text [SEP] (text_pair [SEP]) rows of `seq_len`, longest-first truncation. The texts'
  token ids come from `cache` (research/data/cache.py) when it holds them for this tokenizer:
  a task's splits are tokenized once, not by every run that trains on them.

  Returns (features, number of rows that were truncated).
  """
  s = SpecialIds.of(tokenizer)
  token_ids = lambda texts: (cache or DataCache(None)).token_ids(tokenizer, texts,
                                                                  tokenizer_lib.token_ids)
  texts = token_ids([r["text"] for r in rows])
  paired = [i for i, r in enumerate(rows) if r.get("text_pair")]
  pair_ids = dict(zip(paired, token_ids([rows[i]["text_pair"] for i in paired]))) if paired else {}
  features, truncated = [], 0
  for i, a in enumerate(texts):
    b = pair_ids.get(i)
    budget = seq_len - (3 if b is not None else 2)
    kept_a, kept_b = longest_first(len(a), 0 if b is None else len(b), budget)
    truncated += (kept_a, kept_b) != (len(a), 0 if b is None else len(b))
    parts = [[s.cls], a[:kept_a], [s.sep]] + ([] if b is None else [b[:kept_b], [s.sep]])
    ids = np.concatenate(parts).astype(np.int32)
    types = np.zeros(len(ids), np.int32)
    types[kept_a + 2:] = 1
    features.append(pad({"input_ids": ids, "token_type_ids": types,
                         "attention_mask": np.ones(len(ids), np.int32)}, seq_len, s.pad))
  return features, truncated


def longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """How many ids of each text survive longest-first truncation to `budget`: one id at a time
  off the longer text (the first one on a tie), as transformers' `truncation=True` does."""
  excess = len_a + len_b - budget
  if excess <= 0:
    return len_a, len_b
  gap = len_a - len_b
  if gap >= excess:
    return len_a - excess, len_b
  if -gap >= excess:
    return len_a, len_b - excess
  # The longer is cut to the shorter's length, then the two lose one id in turn, the first first.
  shorter, left = min(len_a, len_b), excess - abs(gap)
  return shorter - (left + 1) // 2, shorter - left // 2


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
