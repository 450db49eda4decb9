"""Packing tokenized documents into fixed-length rows.

Decoder (causal LM): documents, each ending in EOS, are concatenated and cut into rows of
`seq_len`; `segment_ids` number the documents inside a row (1, 2, ...; 0 = padding) so attention
and the loss never cross a document boundary. `Packer` does it a batch of documents at a time
(what `python -m research.data.prepare` streams through); `pack_documents` is one Packer run.

Generative fine-tuning: whole prompt -> completion examples, several to a row, never split
across rows (`pack_examples`), numbered by `segment_ids` like documents.

Encoder (masked LM): each document is cut into chunks of at most `seq_len - reserved` tokens
(room for [CLS]/[SEP]); chunks are never packed together.
"""
import numpy as np


class Packer:
  """Streaming concatenate-and-split: `add(docs)` returns the rows completed so far, `finish()`
  the last, padded row. The rows of any split of the documents into batches are the rows of
  all of them at once; `carry` (fewer than `seq_len` tokens) is all the state between batches."""

  def __init__(self, seq_len: int, eos: int, carry: dict | None = None):
    self.seq_len, self.eos = seq_len, eos
    carry = carry or {"tokens": [], "documents": [], "next_document": 0}
    self.tokens = np.asarray(carry["tokens"], np.int32)
    self.documents = np.asarray(carry["documents"], np.int64)  # each carried token's document
    self.next_document = int(carry["next_document"])

  @property
  def carry(self) -> dict:
    """The state to resume from: JSON-serialisable."""
    return {"tokens": self.tokens.tolist(), "documents": self.documents.tolist(),
            "next_document": self.next_document}

  def add(self, docs) -> dict:
    tokens, documents = [self.tokens], [self.documents]
    for doc in docs:
      tokens.append(np.append(doc, self.eos).astype(np.int32))
      documents.append(np.full(len(doc) + 1, self.next_document, np.int64))
      self.next_document += 1
    tokens, documents = np.concatenate(tokens), np.concatenate(documents)
    full = len(tokens) // self.seq_len * self.seq_len
    self.tokens, self.documents = tokens[full:], documents[full:]
    return _rows(tokens[:full], documents[:full], self.seq_len)

  def finish(self) -> dict:
    """The carried tokens as one row padded to `seq_len` (no row if nothing is carried)."""
    pad = -len(self.tokens) % self.seq_len
    tokens = np.pad(self.tokens, (0, pad))
    documents = np.pad(self.documents, (0, pad), constant_values=-1)
    self.tokens, self.documents = self.tokens[:0], self.documents[:0]
    return _rows(tokens, documents, self.seq_len)


def _rows(tokens: np.ndarray, documents: np.ndarray, seq_len: int) -> dict:
  rows = len(tokens) // seq_len
  ids, documents = tokens.reshape(rows, seq_len), documents.reshape(rows, seq_len)
  # Renumber documents inside each row: 1, 2, ... (a boundary is where the document changes).
  change = np.concatenate([np.ones((rows, 1), bool), documents[:, 1:] != documents[:, :-1]], 1)
  segment_ids = np.where(documents >= 0, np.cumsum(change, axis=1), 0).astype(np.int32)
  return {"input_ids": ids.astype(np.int32), "segment_ids": segment_ids}


def pack_documents(docs: list[np.ndarray], seq_len: int, eos: int) -> dict:
  """Greedy concatenate-and-split; returns {'input_ids', 'segment_ids'} of shape (rows, seq_len)."""
  packer = Packer(seq_len, eos)
  parts = [packer.add(docs), packer.finish()]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def chunk_documents(docs: list[np.ndarray], chunk_len: int) -> list[np.ndarray]:
  """Consecutive pieces of at most `chunk_len` tokens of each document, in order."""
  return [doc[s:s + chunk_len] for doc in docs for s in range(0, max(len(doc), 1), chunk_len)
          if len(doc[s:s + chunk_len])]


def pack_examples(examples: list[dict], seq_len: int) -> dict:
  """Whole examples into rows of `seq_len`, in order: a row closes when the next example does not
  fit, so no example is split across rows (each must be at most `seq_len` tokens).

  Every example is a dict of equally long 1-D arrays ('input_ids' and any per-token features,
  e.g. a loss mask); each is packed alike and padded with 0. Returns those arrays as (rows,
  seq_len) plus 'segment_ids' (1, 2, ... per row, 0 = padding).
  """
  keys = list(examples[0])
  rows, current, used = [], [], 0
  for example in examples:
    n = len(example["input_ids"])
    if n > seq_len:
      raise ValueError(f"an example of {n} tokens does not fit in a row of {seq_len}")
    if used + n > seq_len:
      rows.append(current)
      current, used = [], 0
    current.append(example)
    used += n
  rows.append(current)
  out = {k: [] for k in keys + ["segment_ids"]}
  for row in rows:
    documents = np.concatenate([np.full(len(e["input_ids"]), i, np.int64) for i, e in enumerate(row)])
    pad = seq_len - len(documents)
    out["segment_ids"].append(_rows(np.zeros(seq_len, np.int32),
                                    np.pad(documents, (0, pad), constant_values=-1),
                                    seq_len)["segment_ids"][0])
    for k in keys:
      out[k].append(np.pad(np.concatenate([np.asarray(e[k]) for e in row]), (0, pad)).astype(np.int32))
  return {k: np.stack(v) for k, v in out.items()}
