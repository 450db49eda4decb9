"""The workdir lock, through the command line: a second run on a live run's workdir is refused in
one line and changes nothing; after the holder is killed (-9) a rerun takes the lock over."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from research import tracking
from research.workdir import WorkdirLock

FLAGS = ["--config=configs/mlm.py:runlocal", "--config.train.batch_size=8",
         "--config.data.vocab_size=1024", "--config.data.seq_len=32",
         "--config.evals.every_steps=1000", "--config.evals.batches=1",
         "--config.ckpt.every_steps=5", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]


def _wait_for(condition, proc, seconds=300):
  deadline = time.time() + seconds
  while not condition():
    assert proc.poll() is None, "the first run ended early"
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)


def test_a_held_workdir_is_refused_and_a_killed_holders_lock_taken_over(tmp_path, caplog):
  """Fast: the holder is a process that only takes the lock (the slow test below trains)."""
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from research.workdir "
                             "import WorkdirLock; lock = WorkdirLock(sys.argv[1]); "
                             "print('held', flush=True); time.sleep(600)", workdir],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    refused = run_cli(*FLAGS, f"--workdir={workdir}", "--config.train.steps=2")
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: workdir '{workdir}' is in use by pid {holder.pid} on "
                           f"{socket.gethostname()}, started "), line
    assert f"(lock file {workdir}/lock.0)" in line, line
    assert os.listdir(workdir) == ["lock.0"]  # refused before writing anything
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  lock = WorkdirLock(workdir)  # the kernel released the killed holder's lock
  assert f"its last holder, pid {holder.pid} on {socket.gethostname()}" in caplog.text
  assert "taking it over" in caplog.text
  with pytest.raises(Exception, match=f"is in use by pid {os.getpid()} on"):
    WorkdirLock(workdir)  # held by this process now: a second holder is refused
  lock.release()
  with open(os.path.join(workdir, "lock.0")) as f:
    assert f.read() == ""


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
  workdir = str(tmp_path / "w")
  lock = os.path.join(workdir, "lock.0")
  first = subprocess.Popen([sys.executable, "-m", "research.main", *FLAGS, f"--workdir={workdir}",
                            "--config.train.steps=100000"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "5")), first)
    # A second run, with another seed, while the first trains.
    second = run_cli(*FLAGS, f"--workdir={workdir}", "--config.train.steps=100000",
                     "--config.train.seed=1")
    assert first.poll() is None
    assert second.returncode == 2, second.stderr[-3000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: workdir '{workdir}' is in use by pid {first.pid} on "
                           f"{socket.gethostname()}, started "), line
    assert f"(lock file {lock})" in line and "use another --workdir" in line, line
    assert "Traceback" not in second.stderr
    logged = len(tracking.read_metrics(workdir))
    _wait_for(lambda: len(tracking.read_metrics(workdir)) > logged + 2, first)
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The first run's metrics are whole: every step once, in order, none lost to the second.
  steps = [r["step"] for r in tracking.read_metrics(workdir)]
  assert steps == list(range(1, len(steps) + 1)) and len(steps) > logged
  with open(lock) as f:
    assert f.read().startswith(f"pid {first.pid} on ")  # killed: never released

  last = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  rerun = run_cli(*FLAGS, f"--workdir={workdir}", f"--config.train.steps={last + 1}")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"its last holder, pid {first.pid} on {socket.gethostname()}" in rerun.stderr
  assert "ended without releasing it (killed?); taking it over" in rerun.stderr
  assert f"resumed from step {last}" in rerun.stderr
  with open(lock) as f:
    assert f.read() == ""  # released at the end
