"""A prepared corpus: token rows on disk, read by random access (`data.source='prepared:DIR'`).

`python -m research.data.prepare` writes DIR once; training then reads only the rows of its
batches, so start-up time and memory do not grow with the corpus. DIR holds:

  metadata.json              written last (a directory without it is not finished): `version`,
                             `settings` (the model kind, data.seq_len and, for an encoder, whether
                             rows are sentence pairs: what the rows depend on), `tokenizer`
                             (how it was made), `splits` (per split: its `files`, `rows`,
                             `documents`, `tokens`), `most_frequent` (the commonest training
                             token: the unigram baseline), `row_width`, `source`, `stats`
  tokenizer.json             the tokenizer the rows were made with (the run's tokenizer)
  {train,eval}-NNNNN.array_record
                             ArrayRecord files (grain's random-access format), one record a row:
                             little-endian int32 token ids. Encoder: a chunk of a document of at
                             most seq_len - 2 tokens (seq_len - 3 with a sentence task), which
                             the row builder wraps in [CLS] ... [SEP], splits, masks; decoder: a
                             packed row, seq_len input ids then seq_len segment ids.
  progress.json              while preparing: the finished shards (see `prepare`)

The records are the rows the in-memory path builds (`examples.RowMaker`), in the same order, so
the same `EncoderExamples` / `DecoderExamples` code gives the same batches from either.
"""
import dataclasses
import json
import os

import numpy as np

from research.data import tokenizer as tokenizer_lib
from research.errors import UserError

PREFIX = "prepared:"
VERSION = 1
METADATA = "metadata.json"
TOKENIZER = "tokenizer.json"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: reading a row decodes only that row
SPLITS = ("train", "eval")


def is_prepared(source: str) -> bool:
  return source.startswith(PREFIX)


def settings_of(config) -> dict:
  """What the rows depend on: a prepared corpus serves only runs with the same settings."""
  out = {"model.kind": config.model.kind, "data.seq_len": config.data.seq_len}
  if config.model.kind == "encoder":
    out["sentence pairs (objective.sentence_task != 'none')"] = (
        config.objective.sentence_task != "none")
  return out


def tokenizer_origin(data_cfg) -> dict:
  """How the tokenizer was made: given (data.tokenizer), or trained with data.vocab_size."""
  if data_cfg.tokenizer:
    return {"given": data_cfg.tokenizer}
  return {"trained_vocab_size": data_cfg.vocab_size}


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.array_record"


class RecordRows:
  """A `TokenRows` store (see `examples.DenseRows`) over a split's ArrayRecord files: `take`
  reads just the records asked for."""

  def __init__(self, paths: list, width: int):
    import grain  # pylint: disable=g-import-not-at-top
    self.source = grain.sources.ArrayRecordDataSource(paths)
    self.width = width

  def __len__(self) -> int:
    return len(self.source)

  def take(self, ids: np.ndarray):
    records = self.source.__getitems__([int(i) for i in ids])
    tokens = np.zeros((len(records), self.width), np.int32)
    lengths = np.empty(len(records), np.int64)
    for i, record in enumerate(records):
      row = np.frombuffer(record, "<i4")
      tokens[i, :len(row)], lengths[i] = row, len(row)
    return tokens, lengths


@dataclasses.dataclass
class PreparedCorpus:
  directory: str
  metadata: dict
  tokenizer: object  # tokenizers.Tokenizer

  def rows(self, split: str) -> RecordRows:
    files = self.metadata["splits"][split]["files"]
    return RecordRows([os.path.join(self.directory, f) for f in files], self.metadata["row_width"])

  @property
  def stats(self) -> dict:
    out = dict(self.metadata["stats"])
    for split in SPLITS:
      info = self.metadata["splits"][split]
      out.update({f"data/{split}_documents": info["documents"],
                  f"data/{split}_tokens": info["tokens"], f"data/{split}_rows": info["rows"]})
    return out


def read_metadata(directory: str) -> dict | None:
  path = os.path.join(directory, METADATA)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def open_for(config) -> PreparedCorpus:
  """The prepared corpus `config.data.source` names, checked against the run's config."""
  source = config.data.source
  directory = os.path.expanduser(source[len(PREFIX):])
  again = (f"prepare it for this run: python -m research.data.prepare --config=... "
           f"--output={directory} with this run's --config flags")
  if not os.path.isdir(directory):
    raise UserError(f"data.source {source!r}: no such directory")
  metadata = read_metadata(directory)
  if metadata is None:
    raise UserError(f"data.source {source!r}: no {METADATA}, so not a finished prepared corpus "
                    f"(an interrupted prepare resumes when rerun); {again}")
  if metadata.get("version") != VERSION:
    raise UserError(f"data.source {source!r} has format version {metadata.get('version')}, this "
                    f"code reads version {VERSION}; {again}")
  for key, want in settings_of(config).items():
    have = metadata["settings"].get(key)
    if have != want:
      raise UserError(f"data.source {source!r} was prepared for {key} = {have!r}, this run has "
                      f"{want!r}; {again}")
  tok = tokenizer_lib.from_file(os.path.join(directory, TOKENIZER))
  check_tokenizer(config.data, metadata, tok, source, again)
  return PreparedCorpus(directory, metadata, tok)


def check_tokenizer(data_cfg, metadata: dict, tok, source: str, again: str):
  """The run's tokenizer settings must give the tokenizer the rows were made with."""
  if data_cfg.tokenizer:
    wanted = tokenizer_lib.load(data_cfg.tokenizer)
    if wanted.get_vocab() != tok.get_vocab():
      raise UserError(f"data.tokenizer {data_cfg.tokenizer!r} is not the tokenizer data.source "
                      f"{source!r} was prepared with ({metadata['tokenizer']}); {again}")
  elif metadata["tokenizer"].get("trained_vocab_size", data_cfg.vocab_size) != data_cfg.vocab_size:
    raise UserError(f"data.source {source!r} was prepared with a tokenizer trained to "
                    f"data.vocab_size = {metadata['tokenizer']['trained_vocab_size']}, this run "
                    f"has {data_cfg.vocab_size}; {again}")
