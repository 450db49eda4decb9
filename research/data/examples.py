"""Turning tokenized documents into training examples for each objective, a batch at a time.

Both kinds are infinite sequences of rows addressed by a global example index `i`: epoch
`i // n` visits the `n` distinct rows in a fresh order (a permutation seeded by (seed, epoch)),
and everything random about row `i` is drawn from `keyed_random` with `i` in the key. So any
batch is a pure function of (seed, its example indices), built with a few vectorised numpy ops.

Encoder rows: [CLS] chunk [SEP] (or, with a sentence task, [CLS] A [SEP] B [SEP] where A and B
split a chunk at a random token: NSP swaps B for the start of another chunk, SOP swaps A and B,
each half of the time), padded to `seq_len`, then MLM-corrupted. Decoder rows: packed documents.
"""
import numpy as np

from research.data import keyed_random, masking, packing
from research.data.tokenizer import SpecialIds

# keyed_random streams of the sentence tasks (masking uses 0-2).
CUT, SWAP, OTHER = 3, 4, 5


class ShuffledRows:
  """Global example index -> distinct row index: a fresh permutation per epoch."""

  def __init__(self, num_rows: int, seed: int):
    self.num_rows, self.seed = num_rows, seed
    self._permutations = {}  # the few epochs recent batches touched

  def __len__(self) -> int:
    return self.num_rows

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) >= 4:
        self._permutations.pop(min(self._permutations))
      self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(
          self.num_rows)
    return self._permutations[epoch]

  def row_of(self, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices, np.int64)
    epochs, offsets = np.divmod(indices, self.num_rows)
    out = np.empty_like(indices)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      out[where] = self.permutation(int(epoch))[offsets[where]]
    return out


class EncoderExamples(ShuffledRows):
  """MLM (and NSP/SOP) rows of `seq_len`; `rows(indices)` builds a batch."""

  def __init__(self, token_docs, *, seq_len: int, specials: SpecialIds, vocab_size: int,
               objective_cfg, max_predictions: int, seed: int):
    self.pair = objective_cfg.sentence_task != "none"
    chunks = packing.chunk_documents(token_docs, seq_len - (3 if self.pair else 2))
    super().__init__(len(chunks), seed)
    self.lengths = np.array([len(c) for c in chunks], np.int64)
    self.tokens = np.zeros((len(chunks), max(self.lengths.max(initial=1), 1)), np.int32)
    for i, chunk in enumerate(chunks):
      self.tokens[i, :len(chunk)] = chunk
    self.seq_len, self.specials = seq_len, specials
    self.sentence_task = objective_cfg.sentence_task
    self.mask_kwargs = dict(
        rate=objective_cfg.mask_rate, max_predictions=max_predictions,
        mask_id=specials.mask, regular_ids=specials.regular_ids(vocab_size))

  def pieces(self, indices: np.ndarray) -> dict:
    """Where each row's A and B segments come from: (chunk, offset, length) each, and the label."""
    indices = np.asarray(indices, np.int64)
    chunk = self.row_of(indices)
    length = self.lengths[chunk]
    if not self.pair:
      zeros = np.zeros_like(chunk)
      return dict(a_chunk=chunk, a_start=zeros, a_len=length, b_chunk=chunk, b_start=zeros,
                  b_len=zeros, label=zeros)
    draw = lambda stream, high: keyed_random.integers(self.seed, indices, stream, 1, high)[:, 0]
    cut = np.where(length > 1, 1 + draw(CUT, np.maximum(length - 1, 1)), length)
    label = draw(SWAP, 2)
    a_start, a_len = np.zeros_like(cut), cut
    b_chunk, b_start, b_len = chunk, cut, length - cut
    if self.sentence_task == "nsp":
      other = draw(OTHER, self.num_rows)
      b_chunk = np.where(label == 1, other, chunk)
      b_start = np.where(label == 1, 0, cut)
      b_len = np.where(label == 1, np.minimum(self.lengths[other], np.maximum(b_len, 1)), b_len)
    else:  # sop: B A instead of A B
      a_start, a_len = np.where(label == 1, cut, 0), np.where(label == 1, length - cut, cut)
      b_start, b_len = np.where(label == 1, 0, cut), np.where(label == 1, cut, length - cut)
    return dict(a_chunk=chunk, a_start=a_start, a_len=a_len, b_chunk=b_chunk, b_start=b_start,
                b_len=b_len, label=label)

  def rows(self, indices: np.ndarray) -> dict:
    indices = np.asarray(indices, np.int64)
    s, p = self.specials, np.arange(self.seq_len)[None, :]
    pieces = self.pieces(indices)
    col = lambda start, offset: np.clip(start[:, None] + offset, 0, self.tokens.shape[1] - 1)
    a_len, b_len = pieces["a_len"][:, None], pieces["b_len"][:, None]
    length = a_len + 2 + (b_len + 1 if self.pair else 0)
    ids = np.full((len(indices), self.seq_len), s.pad, np.int32)
    ids[:, 0] = s.cls
    in_a = (p >= 1) & (p <= a_len)
    ids = np.where(in_a, self.tokens[pieces["a_chunk"][:, None], col(pieces["a_start"], p - 1)],
                   ids)
    ids = np.where(p == a_len + 1, s.sep, ids)
    token_types = np.zeros_like(ids)
    if self.pair:
      in_b = (p >= a_len + 2) & (p < a_len + 2 + b_len)
      b_tokens = self.tokens[pieces["b_chunk"][:, None], col(pieces["b_start"], p - a_len - 2)]
      ids = np.where(in_b, b_tokens, ids)
      ids = np.where(p == length - 1, s.sep, ids)
      token_types = ((p >= a_len + 2) & (p < length)).astype(np.int32)
    attention_mask = (p < length).astype(np.int32)
    maskable = (p < length) & (ids != s.cls) & (ids != s.sep)
    example = masking.mask_tokens(ids.astype(np.int32), maskable, self.seed, indices,
                                  **self.mask_kwargs)
    example.update(attention_mask=attention_mask, token_type_ids=token_types)
    if self.pair:
      example["sentence_label"] = pieces["label"].astype(np.int32)
    return example


class DecoderExamples(ShuffledRows):
  """Rows of documents packed into `seq_len` tokens with per-row segment ids."""

  def __init__(self, token_docs, *, seq_len: int, specials: SpecialIds, seed: int):
    packed = packing.pack_documents(token_docs, seq_len, specials.eos)
    self.input_ids, self.segment_ids = packed["input_ids"], packed["segment_ids"]
    super().__init__(len(self.input_ids), seed)

  def rows(self, indices: np.ndarray) -> dict:
    row = self.row_of(indices)
    segment_ids = self.segment_ids[row]
    return {"input_ids": self.input_ids[row], "segment_ids": segment_ids,
            "attention_mask": (segment_ids > 0).astype(np.int32)}
