"""The EMA of the weights (research/ema.py), the training feature added as one module and one
registration line: its weights are the average of the trained weights, a run killed with -9 and
resumed ends with the uninterrupted run's average bit for bit, a bad decay is one line."""
import json
import os
import signal

import numpy as np
import optax
import pytest

from conftest import run_cli
from research import checkpoint, ema, params as params_lib, tracking
from test_cli_errors import _fails_with
from test_resume import start, wait_for

STEPS, DECAY = 8, 0.8
FLAGS = ["--config=configs/finetune.py:task=bbc_news,runlocal", f"--config.train.steps={STEPS}",
         "--config.train.batch_size=8", "--config.data.seq_len=32", "--config.data.vocab_size=512",
         "--config.model.num_layers=1", "--config.evals.every_steps=4",
         "--config.ckpt.every_steps=1", f"--config.ckpt.keep={STEPS}",
         "--config.logging.every_steps=1", "--config.logging.progress=False",
         "--config.logging.tensorboard=False", f"--config.ema.decay={DECAY}"]


def test_the_wrapper_keeps_the_average_of_the_parameters_it_updates():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
  tx = ema.averaged(optax.adam(0.1), 0.9)
  state = tx.init(params)
  expected = {k: v.astype(np.float64) for k, v in params.items()}
  for _ in range(5):
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    expected = {k: 0.9 * expected[k] + 0.1 * np.asarray(params[k], np.float64) for k in params}
  for k in params:
    np.testing.assert_allclose(np.asarray(state.ema[k]), expected[k], rtol=1e-6, atol=1e-7)


def _run(workdir, *extra):
  proc = run_cli(*FLAGS, *extra, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _checkpoint_params(workdir, step):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  return params_lib.flatten(ckpt.restore_raw_state(step)["params"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ema") / "run")
  return workdir, _run(workdir)


def test_the_saved_average_is_the_ema_of_every_step_s_weights(uninterrupted, tmp_path):
  """WORKDIR/ema holds d^T p_0 + sum_k (1 - d) d^(T - k) p_k over the checkpoints' weights p_k;
  p_0, the weights the run starts from, are those of the same run at learning rate 0."""
  workdir, summary = uninterrupted
  start_dir = str(tmp_path / "start")
  _run(start_dir, "--config.optim.learning_rate=0.0", "--config.train.steps=1")
  weights = [_checkpoint_params(start_dir, 1)] + [_checkpoint_params(workdir, k)
                                                   for k in range(1, STEPS + 1)]
  saved = params_lib.flatten(checkpoint.workdir_params(os.path.join(workdir, ema.FOLDER)))
  assert saved.keys() == weights[-1].keys()
  moved = 0
  for path in saved:
    want = DECAY ** STEPS * np.asarray(weights[0][path], np.float64)
    for k in range(1, STEPS + 1):
      want += (1 - DECAY) * DECAY ** (STEPS - k) * np.asarray(weights[k][path], np.float64)
    np.testing.assert_allclose(saved[path], want, rtol=2e-5, atol=1e-6, err_msg=path)
    moved += not np.allclose(saved[path], weights[-1][path])
  assert moved > len(saved) // 2  # the average is not the last weights
  # evaluated beside the raw weights, at every evaluation and on the test split
  records = [r for r in tracking.read_metrics(workdir) if "eval/bbc_news/accuracy" in r]
  assert [r["step"] for r in records] == [4, 8]
  assert all("ema/eval/bbc_news/loss" in r for r in records)
  assert summary["ema/eval/bbc_news/loss"] == records[-1]["ema/eval/bbc_news/loss"]
  assert summary["ema/eval/bbc_news/loss"] != summary["eval/bbc_news/loss"]
  assert "ema/test/bbc_news/accuracy" in summary and summary["ema/step"] == STEPS


def test_kill_9_and_resume_ends_with_the_same_average_bit_for_bit(uninterrupted, tmp_path):
  workdir, summary = uninterrupted
  killed = str(tmp_path / "killed")
  proc = start(killed, FLAGS)
  wait_for(proc, lambda: os.path.isdir(os.path.join(killed, "checkpoints", "3")))
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "summary.json")), "killed too late"
  resumed = _run(killed)
  assert "resumed from step" in resumed["init"]
  ours, theirs = (params_lib.flatten(checkpoint.workdir_params(os.path.join(w, ema.FOLDER)))
                  for w in (killed, workdir))
  assert ours.keys() == theirs.keys()
  for path in ours:
    assert np.array_equal(ours[path], theirs[path]), path
  assert {k: v for k, v in resumed.items() if k.startswith("ema/")} == {
      k: v for k, v in summary.items() if k.startswith("ema/")}


@pytest.mark.parametrize("decay, error", [
    ("1.0", "ema.decay must be in [0, 1) (0: off), got 1.0"),
    ("-0.1", "ema.decay must be in [0, 1) (0: off), got -0.1"),
    ("nan", "ema.decay must be a finite number, got nan")])  # every config float's check
def test_a_decay_outside_0_1_is_one_line_before_anything_is_written(decay, error, tmp_path):
  proc = run_cli(*FLAGS, f"--config.ema.decay={decay}", f"--workdir={tmp_path}/w")
  _fails_with(proc, error)
  assert not os.path.exists(tmp_path / "w")
