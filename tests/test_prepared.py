"""Prepared corpora (`python -m research.data.prepare`, `data.source=prepared:DIR`): the same
batches as the in-memory path, a byte-identical resume after an interruption, and one-line errors
for a corpus prepared for another run."""
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, tiny_config
from research import data as data_lib
from research.data import prepare as prepare_lib, prepared
from research.errors import UserError

WORDS = ("the a of bank market film team match minister election phone chip shares profit "
         "striker cup vote budget screen album court rate growth player season deal").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small .txt corpus: 240 blank-line separated documents of 5 to 400 words."""
  rng = random.Random(0)
  path = tmp_path_factory.mktemp("corpus") / "docs.txt"
  docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400))) + "."
          for _ in range(240)]
  path.write_text("\n\n".join(docs) + "\n")
  return str(path)


def _config(name, corpus, **overrides):
  config = tiny_config(name, **{"data.source": corpus, "data.vocab_size": 300,
                                "data.eval_fraction": 0.2, **overrides})
  return config


def _prepare(config, output, **kwargs):
  return prepare_lib.prepare(config, str(output), progress=False, **kwargs)


def _assert_same_batches(a, b, steps):
  for step in steps:
    x, y = a.host_batch(step), b.host_batch(step)
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=f"step {step} {key}")


@pytest.mark.parametrize("name,task", [("mlm", "none"), ("mlm", "nsp"), ("mlm", "sop"),
                                       ("clm", None)])
def test_prepared_batches_equal_in_memory_batches(corpus, tmp_path, name, task):
  overrides = {"objective.sentence_task": task} if task else {}
  config = _config(name, corpus, **overrides)
  summary = _prepare(config, tmp_path / "prepared", shard_documents=50, batch_documents=16)
  memory = data_lib.build(config, str(tmp_path / "memory_run"))
  config.data.source = f"prepared:{tmp_path / 'prepared'}"
  disk = data_lib.build(config, str(tmp_path / "disk_run"))

  assert disk.tokenizer.to_str() == memory.tokenizer.to_str()
  assert disk.stats == memory.stats
  assert summary["train_rows"] == memory.stats["data/train_rows"]
  assert len(os.listdir(tmp_path / "prepared")) > 6  # several shards were written and joined
  rows = memory.stats["data/train_rows"]
  # Steps inside the first epoch, and past it (a new permutation).
  _assert_same_batches(memory.train, disk.train, [0, 1, 2 * rows // 16 + 3])
  _assert_same_batches(memory.eval, disk.eval, range(memory.eval_steps))


def _files(directory):
  return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_interrupted_prepare_resumes_to_identical_bytes(corpus, tmp_path, monkeypatch):
  config = _config("clm", corpus)  # the decoder: packed rows carry tokens across shards
  _prepare(config, tmp_path / "whole", shard_documents=40)

  real_write, calls = prepare_lib._ShardWriter._write, []
  def write_then_die(self, split, index, rows, info):
    calls.append(index)
    if len(calls) == 5:  # during the third shard's train file: half of it written
      from array_record.python.array_record_module import ArrayRecordWriter
      writer = ArrayRecordWriter(str(tmp_path / "cut" / f"{split}-{index:05d}.array_record.tmp"),
                                 prepared.WRITER_OPTIONS)
      writer.write(b"\0" * 8)
      writer.close()
      raise KeyboardInterrupt  # as a kill would stop it
    return real_write(self, split, index, rows, info)
  monkeypatch.setattr(prepare_lib._ShardWriter, "_write", write_then_die)
  with pytest.raises(KeyboardInterrupt):
    _prepare(config, tmp_path / "cut", shard_documents=40)
  monkeypatch.undo()
  assert not (tmp_path / "cut" / prepared.METADATA).exists()
  assert "train-00000.array_record" in os.listdir(tmp_path / "cut")
  (tmp_path / "cut" / "eval-00009.array_record.tmp").write_bytes(b"half")  # a shard with no eval

  real_shard, shards_written = prepare_lib._ShardWriter.shard, []
  monkeypatch.setattr(prepare_lib._ShardWriter, "shard",
                      lambda self, index, docs, state: shards_written.append(index) or
                      real_shard(self, index, docs, state))
  resumed = _prepare(config, tmp_path / "cut", shard_documents=40)
  assert shards_written[0] == 2, shards_written  # shards 0 and 1 were not redone
  assert resumed["train_rows"] > 0
  whole, cut = _files(tmp_path / "whole"), _files(tmp_path / "cut")
  assert sorted(cut) == sorted(whole)
  for name in whole:
    assert cut[name] == whole[name], name
  # A finished corpus is left as it is.
  assert _prepare(config, tmp_path / "cut", shard_documents=40)["already_prepared"]


def test_a_corpus_prepared_for_another_run_is_refused(corpus, tmp_path):
  config = _config("mlm", corpus)
  _prepare(config, tmp_path / "p")
  source = f"prepared:{tmp_path / 'p'}"

  def refused(match, **overrides):
    other = _config("mlm", corpus, **{"data.source": source, **overrides})
    with pytest.raises(UserError, match=match):
      data_lib.build(other, str(tmp_path / "run"))
  refused(r"prepared for data.seq_len = 64, this run has 32; prepare it for this run",
          **{"data.seq_len": 32})
  refused(r"sentence pairs .* = False, this run has True", **{"objective.sentence_task": "nsp"})
  refused(r"tokenizer trained to data.vocab_size = 300, this run has 500",
          **{"data.vocab_size": 500})
  clm = _config("clm", corpus, **{"data.source": source})
  with pytest.raises(UserError, match=r"prepared for model.kind = 'encoder', this run has "
                                      r"'decoder'"):
    data_lib.build(clm, str(tmp_path / "run"))
  with pytest.raises(UserError, match=r"no metadata.json, so not a finished prepared corpus"):
    data_lib.build(_config("mlm", corpus, **{"data.source": f"prepared:{tmp_path}"}),
                   str(tmp_path / "run"))
  with pytest.raises(UserError, match=r"holds a corpus prepared with other settings \(settings"):
    _prepare(_config("mlm", corpus, **{"data.seq_len": 32}), tmp_path / "p")


def test_training_on_another_seq_len_is_one_line_at_the_command_line(corpus, tmp_path):
  _prepare(_config("mlm", corpus), tmp_path / "p")
  workdir = tmp_path / "run"
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}",
                 f"--config.data.source=prepared:{tmp_path / 'p'}", "--config.data.seq_len=32",
                 "--config.data.vocab_size=300")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("error: data.source 'prepared:") and len(
      [l for l in lines if l.startswith("error")]) == 1, proc.stderr
  assert "prepared for data.seq_len = 64, this run has 32" in lines[-1]
  assert "Traceback" not in proc.stderr and not workdir.exists()


def test_each_host_reads_only_the_records_of_its_rows(corpus, tmp_path):
  config = _config("mlm", corpus)
  _prepare(config, tmp_path / "p")
  config.data.source = f"prepared:{tmp_path / 'p'}"
  examples = data_lib.build(config, str(tmp_path / "run")).train.examples
  read = []
  real_take = examples.chunks.take
  examples.chunks.take = lambda ids: read.append(np.asarray(ids)) or real_take(ids)
  from research.data.pipeline import StepIndexedBatches
  host = StepIndexedBatches(examples, 16, process_index=1, process_count=2)
  host.host_batch(7)
  own = examples.row_of(np.arange(7 * 16 + 8, 8 * 16))  # host 1's half of step 7
  assert len(read) == 1
  np.testing.assert_array_equal(read[0], np.unique(own))


@pytest.mark.parametrize("flag,message", [
    ("--config.data.source={tmp}/nope/*.txt", "error: data.source: no file matches"),
    ("--config.data.sorce=x", "error: bad flags:"),
    ("--config.data.source=prepared:{tmp}", "error: data.source 'prepared:"),
])
def test_prepare_bad_input_is_one_line(tmp_path, flag, message):
  proc = subprocess.run(
      [sys.executable, "-m", "research.data.prepare", "--config=configs/mlm.py:runlocal",
       flag.format(tmp=tmp_path), f"--output={tmp_path / 'out'}", "--progress=false"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
  assert not (tmp_path / "out").exists()  # nothing written
