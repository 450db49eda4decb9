"""Turning tokenized documents into training examples for each objective, a batch at a time.

Both kinds are infinite sequences of rows addressed by a global example index `i`: epoch
`i // n` visits the `n` distinct rows in a fresh order (a permutation seeded by (seed, epoch)),
and everything random about row `i` is drawn from `keyed_random` with `i` in the key. So any
batch is a pure function of (seed, its example indices), built with a few vectorised numpy ops.

Where the rows' tokens live is a `TokenRows` store: `DenseRows` holds them in memory (built from
documents tokenized at start-up), `prepared.RecordRows` reads them from the ArrayRecord files
`python -m research.data.prepare` wrote, a batch's rows at a time. The row-building code below is
the same for both, so both give the same batches.

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


class DenseRows:
  """Token rows of at most `width` tokens, in memory: the `TokenRows` store of the in-memory path.

  A `TokenRows` store has `len()`, `width` (the longest row's length) and
  `take(ids) -> (tokens (len(ids), width) int32 zero-padded, lengths (len(ids),))`.
  """

  def __init__(self, rows):
    self.lengths = np.array([len(r) for r in rows], np.int64)
    self.width = max(int(self.lengths.max(initial=1)), 1)
    self.tokens = np.zeros((len(rows), self.width), np.int32)
    for i, row in enumerate(rows):
      self.tokens[i, :len(row)] = row

  def __len__(self) -> int:
    return len(self.lengths)

  def take(self, ids: np.ndarray):
    return self.tokens[ids], self.lengths[ids]


def encoder_chunks(token_docs, seq_len: int, pair: bool) -> list[np.ndarray]:
  """The documents cut into chunks that leave room for [CLS] [SEP] (and a second [SEP])."""
  return packing.chunk_documents(token_docs, chunk_length(seq_len, pair))


def chunk_length(seq_len: int, pair: bool) -> int:
  return seq_len - (3 if pair else 2)


def decoder_rows(packed: dict) -> np.ndarray:
  """Packed rows as one int32 row each: input_ids then segment_ids (what a record holds)."""
  return np.concatenate([packed["input_ids"], packed["segment_ids"]], axis=1).astype(np.int32)


class RowMaker:
  """Tokenized documents -> the token rows a split's store holds, a batch of documents at a time:
  encoder chunks (`encoder_chunks`) or packed decoder rows (`decoder_rows`). The in-memory path
  feeds it every document at once, `python -m research.data.prepare` a batch at a time (carrying
  the packer's few leftover tokens, `carry`, between batches): the rows are the same."""

  def __init__(self, kind: str, seq_len: int, pair: bool, eos: int, carry: dict | None = None):
    self.kind, self.seq_len, self.pair = kind, seq_len, pair
    self.packer = packing.Packer(seq_len, eos, carry) if kind == "decoder" else None

  @property
  def carry(self) -> dict | None:
    return self.packer.carry if self.packer else None

  def add(self, token_docs) -> list[np.ndarray]:
    if self.kind == "encoder":
      return encoder_chunks(token_docs, self.seq_len, self.pair)
    return list(decoder_rows(self.packer.add(token_docs)))

  def finish(self) -> list[np.ndarray]:
    return list(decoder_rows(self.packer.finish())) if self.packer else []


def most_frequent(counts: np.ndarray, specials: SpecialIds) -> int:
  """The commonest non-special token of `counts` (per-id training token counts): the unigram
  baseline always predicts it."""
  counts = np.array(counts, np.int64)
  counts[list(specials.special)] = 0
  return int(counts.argmax())


class EncoderExamples(ShuffledRows):
  """MLM (and NSP/SOP) rows of `seq_len` from a `TokenRows` store of chunks (`encoder_chunks`);
  `rows(indices)` builds a batch."""

  def __init__(self, chunks, *, seq_len: int, specials: SpecialIds, vocab_size: int,
               objective_cfg, max_predictions: int, seed: int):
    self.pair = objective_cfg.sentence_task != "none"
    super().__init__(len(chunks), seed)
    self.chunks = chunks
    self.seq_len, self.specials = seq_len, specials
    self.sentence_task = objective_cfg.sentence_task
    self.mask_kwargs = dict(
        rate=objective_cfg.mask_rate, max_predictions=max_predictions,
        mask_id=specials.mask, regular_ids=specials.regular_ids(vocab_size))

  def chunk(self, c: int) -> np.ndarray:
    tokens, lengths = self.chunks.take(np.array([c]))
    return tokens[0, :lengths[0]]

  def _draw(self, indices, stream, high):
    return keyed_random.integers(self.seed, indices, stream, 1, high)[:, 0]

  def _fetch(self, indices: np.ndarray):
    """The chunks a batch reads (its own, and NSP's other chunks), read once each:
    (chunk ids, other ids or None, tokens, lengths, position of a chunk id in tokens)."""
    chunk = self.row_of(indices)
    other = self._draw(indices, OTHER, self.num_rows) if self.sentence_task == "nsp" else None
    needed = np.unique(chunk if other is None else np.concatenate([chunk, other]))
    tokens, lengths = self.chunks.take(needed)
    return chunk, other, tokens, np.asarray(lengths, np.int64), (
        lambda ids: np.searchsorted(needed, ids))

  def pieces(self, indices: np.ndarray) -> dict:
    """Where each row's A and B segments come from: (chunk, offset, length) each, and the label."""
    indices = np.asarray(indices, np.int64)
    chunk, other, _, lengths, at = self._fetch(indices)
    return self._pieces(indices, chunk, other, lambda c: lengths[at(c)])

  def _pieces(self, indices, chunk, other, length_of) -> dict:
    length = length_of(chunk)
    if not self.pair:
      zeros = np.zeros_like(chunk)
      return dict(a_chunk=chunk, a_start=zeros, a_len=length, b_chunk=chunk, b_start=zeros,
                  b_len=zeros, label=zeros)
    cut = np.where(length > 1, 1 + self._draw(indices, CUT, np.maximum(length - 1, 1)), length)
    label = self._draw(indices, SWAP, 2)
    a_start, a_len = np.zeros_like(cut), cut
    b_chunk, b_start, b_len = chunk, cut, length - cut
    if self.sentence_task == "nsp":
      b_chunk = np.where(label == 1, other, chunk)
      b_start = np.where(label == 1, 0, cut)
      b_len = np.where(label == 1, np.minimum(length_of(other), np.maximum(b_len, 1)), b_len)
    else:  # sop: B A instead of A B
      a_start, a_len = np.where(label == 1, cut, 0), np.where(label == 1, length - cut, cut)
      b_start, b_len = np.where(label == 1, 0, cut), np.where(label == 1, cut, length - cut)
    return dict(a_chunk=chunk, a_start=a_start, a_len=a_len, b_chunk=b_chunk, b_start=b_start,
                b_len=b_len, label=label)

  def rows(self, indices: np.ndarray) -> dict:
    indices = np.asarray(indices, np.int64)
    s, p = self.specials, np.arange(self.seq_len)[None, :]
    chunk, other, tokens, lengths, at = self._fetch(indices)
    pieces = self._pieces(indices, chunk, other, lambda c: lengths[at(c)])
    col = lambda start, offset: np.clip(start[:, None] + offset, 0, tokens.shape[1] - 1)
    a_len, b_len = pieces["a_len"][:, None], pieces["b_len"][:, None]
    length = a_len + 2 + (b_len + 1 if self.pair else 0)
    ids = np.full((len(indices), self.seq_len), s.pad, np.int32)
    ids[:, 0] = s.cls
    in_a = (p >= 1) & (p <= a_len)
    ids = np.where(in_a, tokens[at(pieces["a_chunk"])[:, None], col(pieces["a_start"], p - 1)],
                   ids)
    ids = np.where(p == a_len + 1, s.sep, ids)
    token_types = np.zeros_like(ids)
    if self.pair:
      in_b = (p >= a_len + 2) & (p < a_len + 2 + b_len)
      b_tokens = tokens[at(pieces["b_chunk"])[:, None], col(pieces["b_start"], p - a_len - 2)]
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
  """Rows of documents packed into `seq_len` tokens with per-row segment ids, from a `TokenRows`
  store of `decoder_rows` (input_ids then segment_ids, 2 * seq_len tokens a row)."""

  def __init__(self, rows, *, seq_len: int, seed: int):
    self.store, self.seq_len = rows, seq_len
    super().__init__(len(rows), seed)

  def rows(self, indices: np.ndarray) -> dict:
    tokens, _ = self.store.take(self.row_of(indices))
    input_ids, segment_ids = tokens[:, :self.seq_len], tokens[:, self.seq_len:2 * self.seq_len]
    return {"input_ids": input_ids, "segment_ids": segment_ids,
            "attention_mask": (segment_ids > 0).astype(np.int32)}
