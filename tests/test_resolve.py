"""Config resolution: what a run derives (heads, MLM prediction count) and the one-pass evaluation."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from research import data as data_lib
from research import tracking
from research.errors import UserError

TINY = ["--config.train.steps=3", "--config.train.batch_size=8", "--config.data.vocab_size=1024",
        "--config.data.seq_len=32", "--config.evals.batches=1", "--config.evals.every_steps=3",
        "--config.logging.every_steps=1", "--config.logging.progress=False",
        "--config.logging.tensorboard=False"]


def test_a_sentence_task_alone_brings_its_head(tmp_path):
  """`--config.objective.sentence_task=nsp` is enough: the heads follow from the objective."""
  workdir = str(tmp_path / "w")
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}", *TINY,
                 "--config.objective.sentence_task=nsp")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["heads"] == ["mlm", "sentence_pair"]
  last = tracking.read_metrics(workdir)[-1]
  np.testing.assert_allclose(last["train/loss"], last["train/mlm/loss"] + last["train/nsp/loss"],
                             rtol=1e-5)
  assert last["train/nsp/loss"] > 0.3  # a two-class cross-entropy near log 2 this early


def test_heads_that_contradict_the_objective_are_refused(tmp_path):
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", *TINY,
                 "--config.model.heads=('lm',)")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "leave model.heads empty" in proc.stderr.strip().splitlines()[-1]
  assert not os.path.exists(tmp_path / "w" / "config.json")


@pytest.mark.parametrize("seq_len, expected", [(32, 5), (128, 20), (512, 77)])
def test_max_predictions_follow_the_mask_rate(seq_len, expected):
  import mlm  # pylint: disable=g-import-not-at-top
  from research import objectives  # pylint: disable=g-import-not-at-top
  config = mlm.get_config("runlocal")
  assert config.objective.max_predictions == -1
  assert objectives.max_predictions(config.objective, seq_len) == expected


def test_a_max_predictions_too_small_for_the_rate_is_refused(tmp_path):
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", *TINY,
                 "--config.data.seq_len=512", "--config.model.max_len=512",
                 "--config.objective.max_predictions=20")
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert "objective.max_predictions (20)" in line and "at least 77" in line, line


def test_masking_predicts_the_configured_share_at_512_tokens(tiny, tmp_path):
  """With the derived slot count, 15% of a long row's tokens are predicted (not 20 of 512)."""
  config = tiny("mlm")
  config.data.seq_len = config.model.max_len = 512
  config.objective.max_predictions = 77  # what resolution derives for 512 tokens
  batch = data_lib.build(config, str(tmp_path)).train.host_batch(0)
  full_rows = batch["attention_mask"].sum(1) == 512
  assert full_rows.any()
  predicted = batch["masked_weights"].sum(1)[full_rows]
  np.testing.assert_array_equal(predicted, round(0.15 * 510))


def test_one_evaluation_pass_counts_every_row_once(tiny, tmp_path):
  config = tiny("mlm")
  config.evals.batches = 0
  built = data_lib.build(config, str(tmp_path))
  rows, batch_size = built.stats["data/eval_rows"], config.train.batch_size
  assert rows % batch_size, "the eval split should not fill whole batches for this test"
  assert built.eval_steps == -(-rows // batch_size)
  masks = [built.eval.host_batch(step)["row_mask"] for step in range(built.eval_steps)]
  assert all(m.all() for m in masks[:-1])
  assert masks[-1].sum() == rows % batch_size  # the filled-up rows of the last batch count 0
  assert sum(int(m.sum()) for m in masks) == rows  # indices 0..rows-1: epoch 0, each row once


def _tokenizer():
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  return tokenizer_lib.train("encoder", [["the quick brown fox jumps over the lazy dog"] * 20], 300)


def test_the_tokenizer_fingerprint_is_of_what_maps_text_to_ids():
  """Padding and truncation are the run's own settings; the vocabulary is the tokenizer."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  tok = _tokenizer()
  saved = checkpoint.tokenizer_fingerprint(tok)
  tok.enable_padding(length=16)
  tok.enable_truncation(16)
  assert checkpoint.tokenizer_fingerprint(tok) == saved
  checkpoint.check_same_tokenizer(saved, tok, "workdir 'w'", "w/tokenizer.json", 4)
  checkpoint.check_same_tokenizer(None, tok, "workdir 'w'", "w/tokenizer.json", 4)  # an old one
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  a, b = list(vocab)[-2:]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  swapped = tokenizers.Tokenizer.from_str(json.dumps(spec))
  with pytest.raises(UserError) as e:
    checkpoint.check_same_tokenizer(saved, swapped, "workdir 'w'", "w/tokenizer.json", 4)
  assert str(e.value) == ("workdir 'w' holds a checkpoint trained with another tokenizer: "
                          "'w/tokenizer.json' differs from the tokenizer checkpoint 4 was trained "
                          "with. Restore that tokenizer.json, or use a new --workdir")


@pytest.mark.parametrize("written, warning", [
    ('{"model": {"hidden_size": 128}, "train": {"steps": 4}}', None),
    ('{"model": {"hidden_size": 128}, "train": {"steps": 9}}', None),  # may change on resume
    ('{"model": {"hidden_size": 64}, "train": {"steps": 4}}',
     "{path} differs from checkpoint 4's config (model.hidden_size: 128 -> 64): the run rewrites "
     "it with its own config (the checkpoint's config is the one trained)"),
    ('{"model": ', "{path} is not a readable config (Expecting value: line 1 column 11 (char 10)): "
                   "the run rewrites it with its own config (the checkpoint's config is the one "
                   "trained)"),
    ('[1, 2]', "{path} is not a readable config ('list' object has no attribute 'items'): the run "
               "rewrites it with its own config (the checkpoint's config is the one trained)"),
])
def test_a_config_json_that_is_not_the_checkpoints_is_named_before_it_is_rewritten(
    tmp_path, caplog, written, warning):
  from research.train import resolve  # pylint: disable=g-import-not-at-top
  path = tmp_path / "config.json"
  path.write_text(written)
  with caplog.at_level("WARNING", logger="research"):
    resolve.warn_if_edited(str(path), {"model": {"hidden_size": 128}, "train": {"steps": 4}}, 4)
  assert [r.getMessage() for r in caplog.records] == ([warning.format(path=path)] if warning else [])
  assert path.read_text() == written  # resolve writes nothing


def test_a_mesh_that_asks_for_more_devices_than_exist_is_refused():
  from research import sharding  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError) as e:
    sharding.mesh_shape({"data": 2, "fsdp": 1, "tensor": 1}, 1)
  assert str(e.value) == ("mesh {'data': 2, 'fsdp': 1, 'tensor': 1} needs 2 devices, but 1 are "
                          "available")
