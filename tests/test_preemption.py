"""SIGTERM/SIGINT: the first asks for a save at the next step boundary, a second exits at once.
(The whole path through the command line: tests/test_resume.py and tests/test_chaos.py.)"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, run_cli
from research.errors import EXIT_ABORTED, EXIT_PREEMPTED
from research.train import preemption


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_a_request_at_the_next_step_and_handlers_are_restored(signum):
  before = signal.getsignal(signum)
  with preemption.Preemption(lambda step: False) as preempt:
    assert not preempt.requested(7)
    os.kill(os.getpid(), signum)
    assert preempt.requested(8)
    assert preempt.signal_name == signal.Signals(signum).name
  assert signal.getsignal(signum) is before


def test_a_second_signal_exits_at_once_with_its_own_code():
  script = textwrap.dedent("""
      import os, signal, time
      from research.train import preemption
      with preemption.Preemption(lambda step: False) as preempt:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert preempt.requested(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
      print("not reached")
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == EXIT_ABORTED, proc.stderr[-2000:]
  assert "not reached" not in proc.stdout
  assert proc.stderr.strip().splitlines()[-1] == (
      "SIGINT again: stopped at once, without saving; rerun the same command to resume from the "
      "latest checkpoint")


MULTI = ["--config=configs/mlm.py:runlocal", "--config.train.steps=40",
         "--config.train.batch_size=16", "--config.data.vocab_size=2048",
         "--config.data.seq_len=64", "--config.evals.every_steps=40", "--config.evals.batches=2",
         "--config.ckpt.every_steps=10", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_every_process(tmp_path):
  """jax's preemption service tells the other process; orbax's sync point picks one step."""
  from process_group import ProcessGroup  # pylint: disable=g-import-not-at-top
  from research import tracking  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  group = ProcessGroup([*MULTI, f"--workdir={workdir}"], num_processes=2, devices=2,
                       distributed_timeout_s=60, deadline_s=300).start()
  deadline = time.time() + 240
  while len(tracking.read_metrics(workdir)) < 13 and time.time() < deadline:
    time.sleep(0.05)
  group.send_signal(1, signal.SIGTERM)
  result = group.wait()
  codes = [p.returncode for p in result.processes]
  assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], result.report()
  lines = [p.stderr.strip().splitlines()[-1] for p in result.processes]
  step = max(r["step"] for r in tracking.read_metrics(workdir))
  saved = os.path.join(workdir, "checkpoints", str(step))
  for line in lines:
    assert line == (f"preempted (SIGTERM) at step {step}: saved {saved}; rerun the same command "
                    "to resume"), result.report()
  assert os.path.isdir(saved)


# research.main with a SIGTERM as the final evaluation starts (`finish`), while the last save may
# still be written in the background.
SIGNAL_IN_FINISH = textwrap.dedent("""
    import os, signal, sys
    from research.train import trainer
    finish = trainer.finish
    def signalled(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGTERM)
      return finish(*args, **kwargs)
    trainer.finish = signalled
    from research import main
    sys.argv[0] = "research.main"
    main.entry()
    """)
TINY = ["--config=configs/mlm.py:runlocal", "--config.train.steps=4", "--config.train.batch_size=8",
        "--config.data.vocab_size=1024", "--config.data.seq_len=32", "--config.evals.batches=1",
        "--config.ckpt.every_steps=2", "--config.logging.progress=False",
        "--config.logging.tensorboard=False"]


@pytest.mark.slow  # two tiny runs: 46 s on the shared 2-core machine
def test_sigterm_during_the_final_evaluation_saves_and_the_rerun_finishes(tmp_path):
  """Before: killed by the signal (exit code 143), no line, and checkpoint 4 left unfinished
  (4.orbax-checkpoint-tmp): the last save lost."""
  from research import checkpoint, tracking  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_FINISH, *TINY, f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
  saved = os.path.join(workdir, "checkpoints", "4")
  assert proc.stderr.strip().splitlines()[-1] == (
      f"preempted (SIGTERM) during the final evaluation at step 4: saved {saved}; rerun the same "
      "command to finish")
  assert checkpoint.Checkpointer(os.path.dirname(saved), use_async=False).newest_readable() == 4
  assert not any(checkpoint.TMP_MARK in n for n in os.listdir(os.path.dirname(saved)))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  assert tracking.read_summaries(workdir)[-1]["outcome"] == "preempted"
  rerun = run_cli(*TINY, f"--workdir={workdir}")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert json.loads(rerun.stdout)["step"] == 4
  assert tracking.read_summaries(workdir)[-1]["outcome"] == "finished"
