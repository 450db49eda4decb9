"""Packing tokenized documents into fixed-length rows.

Decoder (causal LM): documents, each ending in EOS, are concatenated and cut into rows of
`seq_len`; `segment_ids` number the documents inside a row (1, 2, ...; 0 = padding) so attention
and the loss never cross a document boundary.

Encoder (masked LM): each document is cut into chunks of at most `seq_len - reserved` tokens
(room for [CLS]/[SEP]); chunks are never packed together.
"""
import numpy as np


def pack_documents(docs: list[np.ndarray], seq_len: int, eos: int) -> dict:
  """Greedy concatenate-and-split; returns {'input_ids', 'segment_ids'} of shape (rows, seq_len)."""
  tokens, doc_index = [], []
  for i, doc in enumerate(docs):
    tokens.append(np.append(doc, eos).astype(np.int32))
    doc_index.append(np.full(len(doc) + 1, i, np.int64))
  tokens, doc_index = np.concatenate(tokens), np.concatenate(doc_index)
  rows = -(-len(tokens) // seq_len)
  pad = rows * seq_len - len(tokens)
  ids = np.pad(tokens, (0, pad)).reshape(rows, seq_len)
  doc_index = np.pad(doc_index, (0, pad), constant_values=-1).reshape(rows, seq_len)
  # Renumber documents inside each row: 1, 2, ... (a boundary is where the document changes).
  change = np.concatenate([np.ones((rows, 1), bool), doc_index[:, 1:] != doc_index[:, :-1]], 1)
  segment_ids = np.where(doc_index >= 0, np.cumsum(change, axis=1), 0).astype(np.int32)
  return {"input_ids": ids, "segment_ids": segment_ids}


def chunk_documents(docs: list[np.ndarray], chunk_len: int) -> list[np.ndarray]:
  """Consecutive pieces of at most `chunk_len` tokens of each document, in order."""
  return [doc[s:s + chunk_len] for doc in docs for s in range(0, max(len(doc), 1), chunk_len)
          if len(doc[s:s + chunk_len])]
