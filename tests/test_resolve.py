"""Config resolution: what a run derives (heads, MLM prediction count) and the one-pass evaluation."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from research import data as data_lib
from research import tracking

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
