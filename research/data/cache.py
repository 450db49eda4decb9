"""Tokenize once: a trained tokenizer and a corpus's token ids, kept on disk by their content.

A run that trains its tokenizer reads its whole corpus twice before its first step: once to
learn the vocabulary (`tokenizer.train`) and once to encode every document (`tokenizer.token_ids`).
Both are pure functions of what goes in, so `DataCache` keeps what they return under a key of
exactly that (the texts, the model kind and vocabulary size, or the tokenizer's own JSON; and the
version of the code and of `tokenizers` that computes them), and the next run with the same
inputs reads it back: a repeated or resumed run, a sweep over anything but the data, the test
suite's many short runs. A classification task's splits are encoded through it as well
(research/data/encoding.py `encode_texts`). What a run gets is the same either way
(tests/test_data_cache.py compares cached and computed tokenizers and ids, and a cold and a warm
run's losses, with `==`).

Where: `config.data_cache.dir`, default $RESEARCH_DATA_CACHE_DIR, else `~/.cache/research/data`
(`default_dir`); empty turns it off. Clear it with `rm -r` at any time. It holds at most
`MAX_BYTES`; past that the least recently used entries go.

A cache that cannot be used never fails a run: an unwritable folder costs one warning line and
everything is computed as without it; a damaged entry costs one warning line, is replaced by a
freshly computed one. Entries are written to a temporary name and renamed, so a process killed
mid-write, or two processes writing one entry, leave a whole entry or none.
"""
import functools
import hashlib
import logging
import os

import numpy as np
import tokenizers

log = logging.getLogger(__name__)

ENV = "RESEARCH_DATA_CACHE_DIR"
DEFAULT_DIR = os.path.join("~", ".cache", "research", "data")
MAX_BYTES = 4 * 2**30


def default_dir() -> str:
  """$RESEARCH_DATA_CACHE_DIR if set (empty: off), else `~/.cache/research/data`."""
  return os.environ.get(ENV, DEFAULT_DIR)


def section():
  """The `data_cache` config section (research/config_lib.py `common`)."""
  return {"dir": default_dir()}


def of_config(config) -> "DataCache":
  """The cache a run config names (a config without the section: `default_dir()`)."""
  section_ = config.get("data_cache")
  return DataCache(default_dir() if section_ is None else section_.get("dir", default_dir()))


@functools.cache
def _code_version() -> str:
  """What computes the entries: this package's tokenizer code and the `tokenizers` library."""
  from research.data import bpe, tokenizer  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(tokenizers.__version__.encode())
  for module in (bpe, tokenizer):
    with open(module.__file__, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


class DataCache:
  """Tokenizers and token ids by content, in `directory` (None or '': off, a pass-through)."""

  def __init__(self, directory: str | None):
    self.directory = os.path.abspath(os.path.expanduser(directory)) if directory else None

  def tokenizer(self, kind: str, text_batches, vocab_size: int, train) -> tokenizers.Tokenizer:
    """`train(kind, text_batches, vocab_size)`, or the tokenizer it returned for the same texts,
    kind and vocabulary size before. `text_batches` is read twice: lists, not a stream."""
    if not self.directory:
      return train(kind, text_batches, vocab_size)
    key = self._key("tokenizer", kind, str(vocab_size), texts=(t for b in text_batches for t in b))
    path = os.path.join(self.directory, "tokenizers", key + ".json")
    from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    found = self._read(path, lambda: tokenizer_lib.from_file(path))  # its padding off, as trained
    if found is not None:
      return found
    tok = train(kind, text_batches, vocab_size)
    self._write(path, lambda tmp: tok.save(tmp))
    return tok

  def token_ids(self, tok: tokenizers.Tokenizer, texts, encode) -> list:
    """`encode(tok, texts)` (each text's ids as an int32 array), or what it returned for the same
    tokenizer and texts before."""
    if not self.directory:
      return encode(tok, texts)
    key = self._key("token_ids", tok.to_str(), texts=texts)
    path = os.path.join(self.directory, "token_ids", key + ".npz")
    found = self._read(path, lambda: _load_ids(path))
    if found is not None:
      return found
    ids = encode(tok, texts)
    self._write(path, lambda tmp: _save_ids(tmp, ids))
    return ids

  def _key(self, *parts: str, texts) -> str:
    digest = hashlib.sha256(_code_version().encode())
    for part in parts:
      digest.update(len(part).to_bytes(8, "little") + part.encode())
    for text in texts:  # length-prefixed: ["ab", "c"] and ["a", "bc"] differ
      data = text.encode()
      digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()

  def _read(self, path: str, load):
    """What `load()` gives for an existing entry (marked as used), None if there is none; a
    damaged entry is a warning line, removed."""
    if not os.path.exists(path):
      return None
    try:
      found = load()
    except Exception as e:  # pylint: disable=broad-except  (a damaged file: any reader error)
      log.warning("data cache: damaged entry %s removed (%s); computing it afresh", path,
                  str(e).splitlines()[0] if str(e) else type(e).__name__)
      _remove(path)
      return None
    try:
      os.utime(path)  # recently used: evicted last
    except OSError:
      pass
    log.debug("data cache: read %s", path)
    return found

  def _write(self, path: str, write):
    """Writes an entry by `write(temporary path)` then a rename; an unwritable folder is one
    warning line and the cache off for this process."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      write(tmp)
      os.replace(tmp, path)
    except OSError as e:
      log.warning("data cache off: cannot write to %s (%s); tokenizers and token ids are "
                  "computed afresh", self.directory, e.strerror or e)
      _remove(tmp)
      self.directory = None
      return
    self._evict(keep=path)

  def _evict(self, keep: str):
    """Removes the least recently used entries while the folder holds more than `MAX_BYTES`."""
    entries = []
    for sub in ("tokenizers", "token_ids"):
      folder = os.path.join(self.directory, sub)
      for name in os.listdir(folder) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        try:
          stat = os.stat(path)
        except OSError:
          continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
      if total <= MAX_BYTES:
        break
      if path != keep:
        _remove(path)
        total -= size


def _save_ids(path: str, ids: list):
  lengths = np.asarray([len(a) for a in ids], np.int64)
  flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
  with open(path, "wb") as f:
    np.savez(f, ids=flat, lengths=lengths)


def _load_ids(path: str) -> list:
  with np.load(path, allow_pickle=False) as entry:
    flat, lengths = entry["ids"], entry["lengths"]
  if flat.dtype != np.int32 or lengths.sum() != len(flat):
    raise ValueError(f"{len(flat)} ids of dtype {flat.dtype} for lengths summing to "
                     f"{lengths.sum()}")
  return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _remove(path: str):
  try:
    os.remove(path)
  except OSError:
    pass
