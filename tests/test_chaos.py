"""Chaos: 10 interruptions (kill -9, SIGTERM, kill -9 while an async checkpoint is being written)
at seeded random steps, each followed by the same command; the final parameters are bitwise the
uninterrupted run's. Relies on what checkpoints guarantee: orbax writes a save to a temporary
directory and renames it when complete, so a killed save is never taken for a checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_cli
from research import checkpoint, params
from research.errors import EXIT_PREEMPTED

STEPS, INTERRUPTIONS, SEED = 120, 10, 0
FLAGS = ["--config=configs/mlm.py:runlocal", f"--config.train.steps={STEPS}",
         "--config.train.batch_size=8", "--config.data.vocab_size=1024",
         "--config.data.seq_len=32", "--config.evals.every_steps=60", "--config.evals.batches=1",
         "--config.ckpt.every_steps=3", "--config.ckpt.keep=2", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]
KINDS = ("kill -9", "SIGTERM", "kill -9 during a save")


def logged_step(workdir) -> int:
  """The last step in metrics.jsonl (0 if none); a line being written is skipped."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.readlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      return json.loads(line)["step"]
    except ValueError:
      continue
  return 0


def saving(workdir) -> bool:
  """An orbax save in progress: a temporary directory beside the finished checkpoints."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(not n.isdigit() for n in os.listdir(directory))


def wait_until(proc, ready, timeout):
  deadline = time.time() + timeout
  while proc.poll() is None and not ready() and time.time() < deadline:
    time.sleep(0.002)
  return ready()


def interrupt(workdir, target, kind) -> dict:
  """Starts the command, waits for step `target`, interrupts it as `kind` says."""
  proc = subprocess.Popen([sys.executable, "-m", "research.main", *FLAGS, f"--workdir={workdir}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wait_until(proc, lambda: logged_step(workdir) >= target, 300)
  in_save = kind == "kill -9 during a save" and wait_until(proc, lambda: saving(workdir), 10)
  if proc.poll() is None:
    os.kill(proc.pid, signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
  stderr = proc.communicate(timeout=300)[1]
  return {"kind": kind, "target": target, "rc": proc.returncode, "in_save": in_save,
          "stderr": stderr[-1500:]}


@pytest.mark.slow
def test_ten_interruptions_leave_the_final_parameters_bitwise_unchanged(tmp_path):
  reference, chaos = str(tmp_path / "reference"), str(tmp_path / "chaos")
  done = run_cli(*FLAGS, f"--workdir={reference}")
  assert done.returncode == 0, done.stderr[-2000:]

  rng = np.random.default_rng(SEED)
  targets = np.sort(rng.choice(np.arange(4, STEPS - 10), INTERRUPTIONS, replace=False))
  kinds = [KINDS[i] for i in rng.integers(0, len(KINDS), INTERRUPTIONS)]
  events = []
  for target, kind in zip(targets, kinds):
    event = interrupt(chaos, int(target), kind)
    events.append(event)
    assert event["rc"] == (EXIT_PREEMPTED if kind == "SIGTERM" else -signal.SIGKILL), event
    if kind == "SIGTERM":
      assert "rerun the same command to resume" in event["stderr"], event
  print("\n".join(f"{e['kind']} at step {e['target']}: exit {e['rc']}, during a save: "
                  f"{e['in_save']}" for e in events))
  assert any(e["in_save"] for e in events), "no interruption hit a save"

  final = run_cli(*FLAGS, f"--workdir={chaos}")
  assert final.returncode == 0, final.stderr[-2000:]
  assert json.loads(final.stdout)["step"] == STEPS
  ours, theirs = (params.flatten(checkpoint.workdir_params(w)) for w in (chaos, reference))
  assert ours.keys() == theirs.keys()
  for path in ours:
    assert np.array_equal(ours[path], theirs[path]), path
