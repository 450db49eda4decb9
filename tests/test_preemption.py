"""SIGTERM/SIGINT: the first asks for a save at the next step boundary, a second exits at once.
(The whole path through the command line: tests/test_resume.py and tests/test_chaos.py.)"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from research.errors import EXIT_ABORTED
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
