"""Turning tokenized documents into training examples for each objective.

Encoder rows: [CLS] chunk [SEP] (or, with a sentence task, [CLS] A [SEP] B [SEP] where A and B
split a chunk at a random token: NSP swaps B for a piece of another chunk, SOP swaps A and B, each
half of the time), padded to `seq_len`, then MLM-corrupted. Decoder rows: packed documents.
"""
import functools

import grain
import numpy as np

from research.data import masking, packing
from research.data.tokenizer import SpecialIds


def encoder_examples(token_docs, *, seq_len: int, specials: SpecialIds, vocab_size: int,
                     objective_cfg, seed: int) -> tuple[grain.MapDataset, int]:
  """Infinite, shuffled, MLM-corrupted encoder examples, and the number of distinct rows."""
  pair = objective_cfg.sentence_task != "none"
  chunks = packing.chunk_documents(token_docs, seq_len - (3 if pair else 2))
  make = functools.partial(
      _encoder_example, chunks=chunks, seq_len=seq_len, specials=specials,
      sentence_task=objective_cfg.sentence_task, mask_kwargs=dict(
          rate=objective_cfg.mask_rate, max_predictions=objective_cfg.max_predictions,
          mask_id=specials.mask, regular_ids=specials.regular_ids(vocab_size)))
  return (grain.MapDataset.source(chunks).shuffle(seed=seed).repeat(None)
          .random_map(make, seed=seed + 1)), len(chunks)


def decoder_examples(token_docs, *, seq_len: int, specials: SpecialIds,
                     seed: int) -> tuple[grain.MapDataset, int]:
  """Infinite, shuffled rows of packed documents, and the number of distinct rows."""
  packed = packing.pack_documents(token_docs, seq_len, specials.eos)
  rows = [{"input_ids": ids, "segment_ids": seg, "attention_mask": (seg > 0).astype(np.int32)}
          for ids, seg in zip(packed["input_ids"], packed["segment_ids"])]
  return grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None), len(rows)


def _encoder_example(chunk, rng, *, chunks, seq_len, specials, sentence_task, mask_kwargs):
  s = specials
  if sentence_task == "none":
    pieces, label = [[s.cls], chunk, [s.sep]], 0
    types = np.zeros(len(chunk) + 2, np.int32)
  else:
    cut = int(rng.integers(1, len(chunk))) if len(chunk) > 1 else len(chunk)
    a, b = chunk[:cut], chunk[cut:]
    label = int(rng.random() < 0.5)
    if label and sentence_task == "nsp":
      other = chunks[int(rng.integers(len(chunks)))]
      b = other[:max(len(b), 1)]
    elif label:  # sop
      a, b = b, a
    pieces = [[s.cls], a, [s.sep], b, [s.sep]]
    types = np.concatenate([np.zeros(len(a) + 2, np.int32), np.ones(len(b) + 1, np.int32)])
  ids = np.concatenate([np.asarray(p, np.int32) for p in pieces])
  length = len(ids)
  input_ids = np.full(seq_len, s.pad, np.int32)
  input_ids[:length] = ids
  token_type_ids = np.zeros(seq_len, np.int32)
  token_type_ids[:length] = types
  attention_mask = (np.arange(seq_len) < length).astype(np.int32)
  maskable = attention_mask.astype(bool) & (input_ids != s.cls) & (input_ids != s.sep)
  example = masking.mask_tokens(input_ids, maskable, rng, **mask_kwargs)
  example.update(attention_mask=attention_mask, token_type_ids=token_type_ids)
  if sentence_task != "none":
    example["sentence_label"] = np.int32(label)
  return example
