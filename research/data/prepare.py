r"""`python -m research.data.prepare`: tokenize a corpus once into row files training reads.

    python -m research.data.prepare --config=configs/mlm.py --output=/data/corpus_mlm128 \
        --config.data.source='/data/corpus/*.txt'
    python -m research.main --config=configs/mlm.py --workdir=/tmp/run \
        --config.data.source=prepared:/data/corpus_mlm128

It takes a training command's `--config` flags (so both agree on the source, tokenizer, model
kind, seq_len and sentence task), reads the source as training does (`sources.stream_documents`:
the same documents, the same train/eval split), makes or loads the tokenizer as training does
(trained on the training documents, streamed, unless `data.tokenizer` or `init.weights` gives
one), tokenizes a batch of documents at a time, and writes the rows the in-memory path would
build (`examples.RowMaker`) as ArrayRecord files (format: `research/data/prepared.py`). Memory
holds one shard's documents and rows, and the tokenizer's word counts while it is trained.

Resumable: the documents are cut into shards of --shard_documents; each finished shard's files
are renamed into place and then recorded in OUTPUT/progress.json (written atomically, with the
decoder packer's few leftover tokens). A killed prepare, rerun with the same command, skips the
finished shards (reading, not tokenizing, their documents) and writes exactly the bytes an
uninterrupted run writes. metadata.json comes last.

Flags:
  --config           a config file and its --config.SECTION.KEY=VALUE overrides, as for
                     research.main (data.*, model.kind, objective.sentence_task matter here)
  --output           the directory to write (training reads it as data.source=prepared:OUTPUT)
  --shard_documents  documents per shard: the unit of resumption (default 20000)
  --batch_documents  documents tokenized per call (default 1000)
  --progress         progress bars on stderr (default true)
Bad input (an --output that is a file, a corpus with no document for a split, ...) ends with one
line `error: ...` on stderr and exit code 2, before anything is written.
"""
import itertools
import json
import logging
import os
import sys
import time

import numpy as np

from research import files
from research.data import examples as examples_lib
from research.data import prepared, sources, tokenizer as tokenizer_lib
from research.data.tokenizer import SpecialIds
from research.errors import UserError

PROGRESS = "progress.json"
PROBE_DOCUMENTS = 10_000  # documents read before any write to find every split (`check_documents`)

log = logging.getLogger(__name__)


def _write_json(path: str, value: dict):
  """Atomically: a reader (or a rerun after a kill) sees the old file or the new one."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, sort_keys=True)
  os.replace(path + ".tmp", path)


def _batches(items, size: int):
  items = iter(items)
  while batch := list(itertools.islice(items, size)):
    yield batch


def _bar(progress: bool, **kwargs):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, **kwargs)


def prepare(config, output: str, *, shard_documents: int = 20_000, batch_documents: int = 1000,
            progress: bool = True) -> dict:
  """Writes OUTPUT for `config` (or finishes an interrupted run); returns a summary dict."""
  files.check_output_dir(output, "--output")  # first: it needs none of the imports below
  from research import validation  # pylint: disable=g-import-not-at-top
  from research.train import initialization  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  validation.check_config(config)
  if shard_documents < 1 or batch_documents < 1:
    raise UserError("--shard_documents and --batch_documents must be >= 1")
  if prepared.is_prepared(config.data.source):
    raise UserError(f"data.source {config.data.source!r} is already prepared; give the corpus "
                    "it was prepared from")
  initialization.configure(config)  # init.weights implies a tokenizer, as in training
  data_cfg, kind = config.data, config.model.kind
  plan = {"version": prepared.VERSION, "settings": prepared.settings_of(config),
          "tokenizer": prepared.tokenizer_origin(data_cfg), "source": data_cfg.source,
          "text_field": data_cfg.text_field, "eval_fraction": data_cfg.eval_fraction,
          "shard_documents": shard_documents}
  start = time.time()
  done = prepared.read_metadata(output)
  if done is not None:
    if {k: done.get(k) for k in plan} != plan:
      raise UserError(f"--output {output!r} holds a corpus prepared with other settings "
                      f"({_difference(done, plan)}); choose another --output")
    log.info("%s is already prepared", output)
    return {"output": output, "seconds": 0.0, "already_prepared": True}
  check_documents(data_cfg)
  if data_cfg.tokenizer:
    tokenizer_lib.load(data_cfg.tokenizer)
  os.makedirs(output, exist_ok=True)
  state = _read_progress(output, plan)
  for name in os.listdir(output):  # half-written files of an interrupted run
    if name.endswith(".tmp"):
      os.remove(os.path.join(output, name))

  if state is None:  # recorded before anything else is written: a rerun knows the directory
    state = {"plan": plan, "shards": 0, "carry": {s: None for s in prepared.SPLITS},
             "splits": {s: {"files": [], "rows": 0, "documents": 0, "tokens": 0}
                        for s in prepared.SPLITS}, "counts": None}
    _write_json(os.path.join(output, PROGRESS), state)
  train_batches = _batches((d for s, d in sources.stream_documents(data_cfg) if s == "train"),
                           batch_documents)
  tok = tokenizer_lib.get_tokenizer(data_cfg, kind, _counting(train_batches, progress), output)
  if not os.path.exists(os.path.join(output, prepared.TOKENIZER)):
    tokenizer_lib.save(tok, output)
  if state["counts"] is None:
    state["counts"] = [0] * tok.get_vocab_size()
  writer = _ShardWriter(output, tok, config, batch_documents)
  stats = {}
  stream = sources.stream_documents(data_cfg, stats)
  bar = _bar(progress, desc="prepare", unit="doc")
  for index, shard in enumerate(_batches(stream, shard_documents)):
    bar.update(len(shard))
    if index < state["shards"]:
      continue  # finished before an interruption
    state = writer.shard(index, shard, state)
    _write_json(os.path.join(output, PROGRESS), state)
  bar.close()
  metadata = writer.finish(state, plan, stats)
  _write_json(os.path.join(output, prepared.METADATA), metadata)
  os.remove(os.path.join(output, PROGRESS))
  seconds = time.time() - start
  tokens = sum(metadata["splits"][s]["tokens"] for s in prepared.SPLITS)
  return {"output": output, "seconds": round(seconds, 2),
          "tokens_per_sec": round(tokens / max(seconds, 1e-9)), "tokens": tokens,
          **{f"{s}_{k}": metadata["splits"][s][k] for s in prepared.SPLITS
             for k in ("documents", "rows")}}


def check_documents(data_cfg):
  """Before any write: a source that cannot be read fails, and so does a corpus that ends within
  its first PROBE_DOCUMENTS documents without one for each split (an empty corpus, a tiny one).
  A larger corpus is read once here only up to that point; `_ShardWriter.finish` checks the rest."""
  seen, probe = set(), sources.stream_documents(data_cfg)
  for split, _ in itertools.islice(probe, PROBE_DOCUMENTS):
    seen.add(split)
    if len(seen) == len(prepared.SPLITS):
      break
  ended = next(probe, None) is None
  probe.close()
  missing = [split for split in prepared.SPLITS if split not in seen]
  if missing and ended:
    raise sources.no_documents(data_cfg.source, missing[0])


def _counting(batches, progress: bool):
  """The batches, counted on a progress bar (the tokenizer's training pass, if it trains)."""
  bar = _bar(progress, desc="tokenizer", unit="doc")
  for batch in batches:
    bar.update(len(batch))
    yield batch
  bar.close()


def _difference(done: dict, plan: dict) -> str:
  key = next(k for k in plan if done.get(k) != plan[k])
  return f"{key}: {done.get(key)!r}, asked {plan[key]!r}"


def _read_progress(output: str, plan: dict) -> dict | None:
  """The state of an interrupted prepare of the same plan; None for a fresh start."""
  path = os.path.join(output, PROGRESS)
  if not os.path.exists(path):
    if os.path.exists(os.path.join(output, prepared.TOKENIZER)) or any(
        f.endswith(".array_record") for f in os.listdir(output)):
      raise UserError(f"--output {output!r} holds files of another prepare but no {PROGRESS}; "
                      "choose another --output")
    return None
  with open(path) as f:
    state = json.load(f)
  if state["plan"] != plan:
    raise UserError(f"--output {output!r} holds an interrupted prepare with other settings "
                    f"({_difference(state['plan'], plan)}); rerun that command, or choose "
                    "another --output")
  return state


class _ShardWriter:
  """Tokenizes a shard's documents, makes their rows and writes them, a split at a time."""

  def __init__(self, output: str, tok, config, batch_documents: int):
    self.output, self.tok, self.batch_documents = output, tok, batch_documents
    self.specials = SpecialIds.of(tok)
    self.kind, self.seq_len = config.model.kind, config.data.seq_len
    self.pair = self.kind == "encoder" and config.objective.sentence_task != "none"
    self.width = (examples_lib.chunk_length(self.seq_len, self.pair) if self.kind == "encoder"
                  else 2 * self.seq_len)

  def _maker(self, carry):
    return examples_lib.RowMaker(self.kind, self.seq_len, self.pair, self.specials.eos, carry)

  def shard(self, index: int, docs: list, state: dict) -> dict:
    state = json.loads(json.dumps(state))  # a copy: the old state stays valid until replaced
    counts = np.asarray(state["counts"], np.int64)
    for split in prepared.SPLITS:
      texts = [d for s, d in docs if s == split]
      maker, rows, info = self._maker(state["carry"][split]), [], state["splits"][split]
      for batch in _batches(texts, self.batch_documents):
        encoded = tokenizer_lib.token_ids(self.tok, batch)
        info["documents"] += len(batch)
        info["tokens"] += int(sum(map(len, encoded)))
        if split == "train" and encoded:
          counts += np.bincount(np.concatenate(encoded), minlength=len(counts))
        rows.extend(maker.add(encoded))
      self._write(split, index, rows, info)
      state["carry"][split] = maker.carry
    state["counts"], state["shards"] = counts.tolist(), index + 1
    return state

  def finish(self, state: dict, plan: dict, stats: dict) -> dict:
    for split in prepared.SPLITS:
      info = state["splits"][split]
      self._write(split, state["shards"], self._maker(state["carry"][split]).finish(), info)
      if not info["rows"]:
        raise sources.no_documents(plan["source"], split)
    return {**plan, "splits": state["splits"], "row_width": self.width,
            "most_frequent": examples_lib.most_frequent(state["counts"], self.specials),
            "vocab_size": self.tok.get_vocab_size(), "stats": stats}

  def _write(self, split: str, index: int, rows: list, info: dict):
    """Writes the shard's file (if it has rows) under a temporary name, then renames it."""
    if not rows:
      return
    from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
    name = prepared.shard_name(split, index)
    path = os.path.join(self.output, name)
    writer = ArrayRecordWriter(path + ".tmp", prepared.WRITER_OPTIONS)
    for row in rows:
      writer.write(np.asarray(row, "<i4").tobytes())
    writer.close()
    os.replace(path + ".tmp", path)
    info["files"].append(name)
    info["rows"] += len(rows)


def main(argv):
  from research.errors import exit_with  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    exit_with(f"unexpected arguments {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                      datefmt="%H:%M:%S")
  try:
    summary = prepare(FLAGS.config, FLAGS.output, shard_documents=FLAGS.shard_documents,
                      batch_documents=FLAGS.batch_documents, progress=FLAGS.progress)
  except UserError as e:
    exit_with(e)
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mlm.py:runlocal, "
                                  "and its --config.SECTION.KEY=VALUE overrides.",
                                  lock_config=True)
  flags.DEFINE_string("output", None, "Directory to write; train with "
                      "--config.data.source=prepared:OUTPUT.")
  flags.DEFINE_integer("shard_documents", 20_000, "Documents per shard (the unit of resumption).",
                       lower_bound=1)
  flags.DEFINE_integer("batch_documents", 1000, "Documents tokenized per call.", lower_bound=1)
  flags.DEFINE_bool("progress", True, "Progress bars on stderr.")
  flags.mark_flags_as_required(["config", "output"])

  def parse_flags(argv):
    from research.errors import exit_with  # pylint: disable=g-import-not-at-top
    try:
      return FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
      exit_with(f"bad flags: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

  app.run(main, flags_parser=parse_flags)
