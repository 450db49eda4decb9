"""Interrupt a run (kill -9, SIGTERM), rerun the same command: it continues exactly (CPU).
Rerun a finished run: its summary keeps the figures of the run that trained it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_cli
from research import checkpoint, params, tracking
from research.errors import EXIT_PREEMPTED

FLAGS = ["--config=configs/mlm.py:runlocal", "--config.train.steps=40",
         "--config.train.batch_size=16", "--config.data.vocab_size=2048",
         "--config.data.seq_len=64", "--config.evals.every_steps=20", "--config.evals.batches=2",
         "--config.ckpt.every_steps=10", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run's workdir."""
  workdir = str(tmp_path_factory.mktemp("resume") / "reference")
  done = run_cli(*FLAGS, f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr[-2000:]
  return workdir


def start(workdir, flags=FLAGS):
  return subprocess.Popen([sys.executable, "-m", "research.main", *flags, f"--workdir={workdir}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(proc, ready, timeout=300):
  deadline = time.time() + timeout
  while not ready() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, f"ended before it could be interrupted: {proc.stderr.read()[-2000:]}"


def assert_same_losses(workdir, reference_workdir):
  expected = {r["step"]: r for r in tracking.read_metrics(reference_workdir)}
  got = tracking.read_metrics(workdir)
  assert [r["step"] for r in got] == list(range(1, 41))  # each step once, none lost
  for r in got:
    for key in ("train/loss", "train/grad_norm", "eval/mlm/loss", "eval/mlm/accuracy"):
      if key in expected[r["step"]]:
        assert r[key] == expected[r["step"]][key], (r["step"], key)


def assert_same_params(workdir, reference_workdir):
  ours, theirs = (params.flatten(checkpoint.workdir_params(w)) for w in (workdir, reference_workdir))
  assert ours.keys() == theirs.keys()
  for path in ours:
    assert np.array_equal(ours[path], theirs[path]), path


def test_kill_and_resume_reproduces_the_uninterrupted_losses(reference, tmp_path):
  killed = str(tmp_path / "killed")
  proc = start(killed)
  wait_for(proc, lambda: os.path.isdir(os.path.join(killed, "checkpoints", "10")))
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "summary.json")), "killed too late to test resume"
  steps_before = [r["step"] for r in tracking.read_metrics(killed)]
  assert steps_before and max(steps_before) < 40

  resumed = run_cli(*FLAGS, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step" in resumed.stderr
  assert_same_losses(killed, reference)


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_rerun_ends_bit_exactly(reference, tmp_path):
  workdir = str(tmp_path / "preempted")
  proc = start(workdir)
  wait_for(proc, lambda: len(tracking.read_metrics(workdir)) >= 13)  # past checkpoint 10
  os.kill(proc.pid, signal.SIGTERM)
  stderr = proc.communicate(timeout=300)[1]
  assert proc.returncode == EXIT_PREEMPTED, stderr[-2000:]
  line = stderr.strip().splitlines()[-1]
  step = max(r["step"] for r in tracking.read_metrics(workdir))  # the step it stopped after
  assert 13 <= step < 40
  saved = os.path.join(workdir, "checkpoints", str(step))
  assert line == (f"preempted (SIGTERM) at step {step}: saved {saved}; rerun the same command "
                  "to resume")
  assert checkpoint.Checkpointer.latest_in(os.path.join(workdir, "checkpoints")) == step
  assert tracking.read_summaries(workdir)[-1]["outcome"] == "preempted"

  resumed = run_cli(*FLAGS, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from step {step}" in resumed.stderr
  assert_same_losses(workdir, reference)
  assert_same_params(workdir, reference)


def test_rerun_of_a_finished_run_appends_its_summary_and_keeps_the_first(reference, tmp_path):
  workdir = str(tmp_path / "finished")
  shutil.copytree(reference, workdir)
  summary_path = os.path.join(workdir, tracking.SUMMARY_FILE)
  with open(summary_path) as f:
    trained = json.load(f)
  rerun = run_cli(*FLAGS, f"--workdir={workdir}")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  with open(summary_path) as f:
    assert json.load(f) == trained  # the figures of the run that trained these weights
  assert trained["perf/compile_seconds"] is not None
  lines = tracking.read_summaries(workdir)
  assert [(l["outcome"], l["start_step"], l["step"]) for l in lines] == [
      ("finished", 0, 40), ("finished", 40, 40)]
  assert lines[0]["wall_seconds"] == trained["wall_seconds"]
  assert lines[1]["perf/compile_seconds"] is None  # it trained nothing
  assert lines[1]["wall_seconds"] == json.loads(rerun.stdout)["wall_seconds"]


@pytest.mark.slow
def test_a_checkpoint_from_before_the_health_field_resumes_exactly(reference, tmp_path):
  """Checkpoints written before the train state carried `health` (the non-finite counts) hold
  step/params/opt_state only: they resume (with a fresh count), they are not taken for damaged."""
  workdir = str(tmp_path / "old")
  first = run_cli(*FLAGS, "--config.ckpt.keep=4", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-2000:]
  directory = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, use_async=False)
  step = 20  # rewritten in the old layout, the later ones removed: the rerun trains 20 -> 40
  state = ckpt.restore_raw_state(step)
  data, config = (ckpt.manager.restore(step, args=checkpoint.ocp.args.Composite(
      **{k: checkpoint.ocp.args.JsonRestore()}))[k] for k in ("data", "config"))
  ckpt.close()
  shutil.rmtree(directory)
  old = checkpoint.Checkpointer(directory, use_async=False)
  old.save(step, {k: v for k, v in state.items() if k != "health"}, data, config)
  old.close()
  assert "health" not in old.saved_state_fields(step)

  resumed = run_cli(*FLAGS, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from step {step}" in resumed.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints.damaged"))
  assert_same_params(workdir, reference)
