"""research/data/cache.py: a trained tokenizer and a corpus's token ids are read back, equal to
what computing them gives, for the same inputs only; a damaged entry or an unwritable folder
costs a warning line, never a result; and a warm run trains exactly as a cold one."""
import logging
import os
import stat

import numpy as np
import pytest

from conftest import run_cli, tiny_config
from research import train as train_lib
from research import tracking
from research.data import cache as data_cache
from research.data import tokenizer as tokenizer_lib

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen jugs.",
         "How vexingly quick daft zebras jump!", "Sphinx of black quartz, judge my vow."] * 5


def forbidden(*args):
  raise AssertionError(f"computed again, not read from the cache: {args[:1]}")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_a_cached_tokenizer_and_ids_are_the_computed_ones(tmp_path, kind):
  cache = data_cache.DataCache(str(tmp_path))
  trained = cache.tokenizer(kind, [TEXTS], 300, tokenizer_lib.train)
  reference = tokenizer_lib.train(kind, [TEXTS], 300)
  assert trained.to_str() == reference.to_str()
  read = data_cache.DataCache(str(tmp_path)).tokenizer(kind, [TEXTS], 300, forbidden)
  assert read.to_str() == reference.to_str()

  texts = TEXTS + ["", "one more, longer than the others: quartz quartz quartz."]
  computed = cache.token_ids(reference, texts, tokenizer_lib.token_ids)
  read_ids = data_cache.DataCache(str(tmp_path)).token_ids(read, texts, forbidden)
  expected = tokenizer_lib.token_ids(reference, texts)
  assert len(read_ids) == len(computed) == len(expected) == len(texts)
  for got, also, want in zip(read_ids, computed, expected):
    assert got.dtype == np.int32 and np.array_equal(got, want) and np.array_equal(also, want)


def test_other_inputs_are_other_entries(tmp_path):
  """Every input of the key: texts (also split differently), vocabulary size, model kind; and
  for ids the tokenizer."""
  cache = data_cache.DataCache(str(tmp_path))
  calls = []

  def counted(kind, batches, size):
    calls.append((kind, size))
    return tokenizer_lib.train(kind, batches, size)

  tok = cache.tokenizer("encoder", [TEXTS], 300, counted)
  cache.tokenizer("encoder", [TEXTS], 300, counted)
  assert len(calls) == 1
  cache.tokenizer("encoder", [TEXTS], 301, counted)
  cache.tokenizer("decoder", [TEXTS], 300, counted)
  cache.tokenizer("encoder", [TEXTS[:-1]], 300, counted)
  cache.tokenizer("encoder", [TEXTS[:-1] + [TEXTS[-1][:5], TEXTS[-1][5:]]], 300, counted)
  assert len(calls) == 5

  encoded = []

  def encode(tokenizer, texts):
    encoded.append(len(texts))
    return tokenizer_lib.token_ids(tokenizer, texts)

  cache.token_ids(tok, TEXTS, encode)
  cache.token_ids(tok, TEXTS, encode)
  assert len(encoded) == 1
  cache.token_ids(tokenizer_lib.train("decoder", [TEXTS], 300), TEXTS, encode)
  cache.token_ids(tok, TEXTS[1:], encode)
  assert len(encoded) == 3


def test_a_damaged_entry_is_a_warning_and_computed_again(tmp_path, caplog):
  cache = data_cache.DataCache(str(tmp_path))
  tok = cache.tokenizer("encoder", [TEXTS], 300, tokenizer_lib.train)
  ids = cache.token_ids(tok, TEXTS, tokenizer_lib.token_ids)
  entries = [os.path.join(d, n) for d, _, names in os.walk(tmp_path) for n in names]
  assert len(entries) == 2
  for path in entries:
    with open(path, "wb") as f:
      f.write(b"\x00garbage")
  with caplog.at_level(logging.WARNING, logger="research.data.cache"):
    again = data_cache.DataCache(str(tmp_path))
    tok2 = again.tokenizer("encoder", [TEXTS], 300, tokenizer_lib.train)
    ids2 = again.token_ids(tok2, TEXTS, tokenizer_lib.token_ids)
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 2 and all(w.startswith("data cache: damaged entry ") for w in warnings)
  assert tok2.to_str() == tok.to_str() and all(map(np.array_equal, ids2, ids))
  # written again, whole: a third cache reads both without computing
  third = data_cache.DataCache(str(tmp_path))
  assert third.tokenizer("encoder", [TEXTS], 300, forbidden).to_str() == tok.to_str()
  assert all(map(np.array_equal, third.token_ids(tok, TEXTS, forbidden), ids))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_an_unwritable_folder_is_one_warning_and_no_cache(tmp_path, caplog):
  folder = tmp_path / "ro"
  folder.mkdir()
  folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
  try:
    cache = data_cache.DataCache(str(folder))
    with caplog.at_level(logging.WARNING, logger="research.data.cache"):
      tok = cache.tokenizer("encoder", [TEXTS], 300, tokenizer_lib.train)
      ids = cache.token_ids(tok, TEXTS, tokenizer_lib.token_ids)
  finally:
    folder.chmod(stat.S_IRWXU)
  assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
      f"data cache off: cannot write to {folder}"]
  assert tok.to_str() == tokenizer_lib.train("encoder", [TEXTS], 300).to_str()
  assert all(map(np.array_equal, ids, tokenizer_lib.token_ids(tok, TEXTS)))
  assert os.listdir(folder) == []


def test_a_file_in_place_of_the_folder_is_one_warning_and_no_cache(tmp_path, caplog):
  """(The read-only test's case for root, who may write anywhere.)"""
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  cache = data_cache.DataCache(str(blocker))
  with caplog.at_level(logging.WARNING, logger="research.data.cache"):
    tok = cache.tokenizer("encoder", [TEXTS], 300, tokenizer_lib.train)
    cache.token_ids(tok, TEXTS, tokenizer_lib.token_ids)
  assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
      f"data cache off: cannot write to {blocker}"]
  assert tok.to_str() == tokenizer_lib.train("encoder", [TEXTS], 300).to_str()
  assert blocker.read_text() == "not a folder"


def test_least_recently_used_entries_go_past_the_limit(tmp_path, monkeypatch):
  cache = data_cache.DataCache(str(tmp_path))
  tok = tokenizer_lib.train("encoder", [TEXTS], 300)
  cache.token_ids(tok, TEXTS[:4], tokenizer_lib.token_ids)
  first = os.listdir(tmp_path / "token_ids")
  size = os.path.getsize(tmp_path / "token_ids" / first[0])
  os.utime(tmp_path / "token_ids" / first[0], (1, 1))  # long unused
  monkeypatch.setattr(data_cache, "MAX_BYTES", int(2.5 * size))
  cache.token_ids(tok, TEXTS[1:5], tokenizer_lib.token_ids)
  cache.token_ids(tok, TEXTS[2:6], tokenizer_lib.token_ids)
  left = os.listdir(tmp_path / "token_ids")
  assert len(left) == 2 and first[0] not in left


def test_a_warm_run_reads_the_cache_and_trains_exactly_as_a_cold_one(tmp_path, monkeypatch):
  """Two fresh runs on one data cache: the second trains no tokenizer and encodes nothing, and
  its tokenizer.json and losses are the first's; a third with the cache off agrees too."""
  folder = tmp_path / "cache"

  def run(name, cache_dir):
    config = tiny_config(steps=4, **{"data_cache.dir": cache_dir})
    config.evals.every_steps = 4
    train_lib.run(config, str(tmp_path / name))
    with open(tmp_path / name / "tokenizer.json") as f:
      records = tracking.read_metrics(str(tmp_path / name))
      return [r["train/loss"] for r in records if "train/loss" in r], f.read()

  cold = run("cold", str(folder))
  assert sorted(os.listdir(folder)) == ["token_ids", "tokenizers"]
  assert len(os.listdir(folder / "token_ids")) == 2  # train and eval splits
  with monkeypatch.context() as patch:
    patch.setattr(tokenizer_lib, "train", forbidden)
    patch.setattr(tokenizer_lib, "token_ids", forbidden)
    warm = run("warm", str(folder))
  off = run("off", "")
  assert cold == warm == off
  assert len(cold[0]) == 4  # every step logged


def test_a_warm_fine_tuning_run_tokenizes_nothing_and_trains_exactly_as_a_cold_one(
    tmp_path, monkeypatch):
  """A classification task's splits (research/data/encoding.py `encode_texts`) through the
  cache: a second fresh run reads its tokenizer and every split's ids, and logs the first's
  losses and held-out metrics."""
  import finetune  # pylint: disable=g-import-not-at-top  (configs/)
  folder = tmp_path / "cache"

  def run(name):
    config = finetune.get_config("task=bbc_news,runlocal")
    config.train.update(steps=2, batch_size=8)
    config.data.update(seq_len=32, vocab_size=512)
    config.model.num_layers = 1
    config.logging.update(progress=False, tensorboard=False)
    config.data_cache.dir = str(folder)
    summary = train_lib.run(config, str(tmp_path / name))
    losses = [r["train/loss"] for r in tracking.read_metrics(str(tmp_path / name))]
    return losses, {k: v for k, v in summary.items() if k.startswith(("eval/", "test/"))}

  cold = run("cold")
  assert len(os.listdir(folder / "token_ids")) == 3  # the train, eval and test splits' texts
  with monkeypatch.context() as patch:
    patch.setattr(tokenizer_lib, "train", forbidden)
    patch.setattr(tokenizer_lib, "token_ids", forbidden)
    warm = run("warm")
  assert cold == warm
  assert len(cold[0]) == 2 and "test/bbc_news/accuracy" in cold[1]


def test_a_cached_tokenizer_comes_back_with_its_own_padding_off(tmp_path):
  """An entry is read as every tokenizer we load is (`tokenizer.from_file`): a padding setting in
  its JSON (an entry edited by hand, or from a tokenizer that carried one) is switched off."""
  cache = data_cache.DataCache(str(tmp_path))
  tok = cache.tokenizer("encoder", [TEXTS], 300, tokenizer_lib.train)
  (entry,) = (tmp_path / "tokenizers").iterdir()
  tok.enable_padding(length=64)
  tok.enable_truncation(64)
  tok.save(str(entry))
  read = data_cache.DataCache(str(tmp_path)).tokenizer("encoder", [TEXTS], 300, forbidden)
  assert read.padding is None and read.truncation is None
  assert len(read.encode("one more").ids) < 64


TINY_FLAGS = ["--config=configs/mlm.py:runlocal", "--config.train.batch_size=8",
              "--config.data.vocab_size=1024", "--config.data.seq_len=32",
              "--config.evals.every_steps=2", "--config.evals.batches=1",
              "--config.logging.progress=False", "--config.logging.tensorboard=False"]


def test_the_flag_names_the_folder_and_a_resumed_run_may_change_it(tmp_path):
  """`--config.data_cache.dir` through the command line: the run's tokenizer and token ids land
  there; resuming with the cache off (`--config.data_cache.dir=`) is allowed and goes on."""
  folder, workdir = tmp_path / "cache", tmp_path / "run"
  first = run_cli(*TINY_FLAGS, "--config.train.steps=2", f"--config.data_cache.dir={folder}",
                  f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  (entry,) = (folder / "tokenizers").iterdir()
  assert tokenizer_lib.from_file(str(entry)).to_str() == \
      tokenizer_lib.from_file(str(workdir / "tokenizer.json")).to_str()
  assert len(list((folder / "token_ids").iterdir())) == 2
  resumed = run_cli(*TINY_FLAGS, "--config.train.steps=4", "--config.data_cache.dir=",
                    f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert [r["step"] for r in tracking.read_metrics(str(workdir)) if "train/loss" in r][-1] == 4
