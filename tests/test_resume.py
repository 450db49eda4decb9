"""Kill -9 after a checkpoint, rerun the same command: the run continues exactly (CPU)."""
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, run_cli
from research import tracking

FLAGS = ["--config=configs/mlm.py:runlocal", "--config.train.steps=40",
         "--config.train.batch_size=16", "--config.data.vocab_size=2048",
         "--config.data.seq_len=64", "--config.evals.every_steps=20", "--config.evals.batches=2",
         "--config.ckpt.every_steps=10", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]


def test_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path):
  reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  done = run_cli(*FLAGS, f"--workdir={reference}")
  assert done.returncode == 0, done.stderr[-2000:]

  proc = subprocess.Popen([sys.executable, "-m", "research.main", *FLAGS, f"--workdir={killed}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first_checkpoint = os.path.join(killed, "checkpoints", "10")
  deadline = time.time() + 300
  while not os.path.isdir(first_checkpoint) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "summary.json")), "killed too late to test resume"
  steps_before = [r["step"] for r in tracking.read_metrics(killed)]
  assert steps_before and max(steps_before) < 40

  resumed = run_cli(*FLAGS, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step" in resumed.stderr
  expected = {r["step"]: r for r in tracking.read_metrics(reference)}
  got = tracking.read_metrics(killed)
  assert [r["step"] for r in got] == list(range(1, 41))  # each step once, none lost
  for r in got:
    for key in ("train/loss", "train/grad_norm", "eval/mlm/loss", "eval/mlm/accuracy"):
      if key in expected[r["step"]]:
        assert r[key] == expected[r["step"]][key], (r["step"], key)
