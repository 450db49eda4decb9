"""Preemption: SIGTERM or SIGINT asks the run to checkpoint at the next step boundary and stop.

`Preemption` wraps the train loop and the final evaluation (a context manager); after every
step the loop asks `requested(step)`. It is true once a signal has come (one process), or, with
several processes, at the step jax's preemption service picked for all of them (orbax's
`reached_preemption`: the processes exchange their steps in the background and agree on the next
one), so every process saves the same step. The final evaluation asks between its parts whether
a signal came (`signal_name`; one process) and stops once the last checkpoint is complete. A
second signal ends the process at once (`EXIT_ABORTED`, no save). (With several processes a
second SIGTERM goes to jax's service, which does not stop at once.)

With several processes jax's preemption service owns SIGTERM (its handler tells every
process), so only SIGINT is ours there: it is passed on to that service as a SIGTERM. Handlers
are installed from the main thread only (Python allows no other) and restored on exit.
"""
import os
import signal
import sys
import threading

import jax

from research.errors import EXIT_ABORTED

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
  def __init__(self, reached_sync_point):
    """`reached_sync_point(step) -> bool`: the multi-host sync point (orbax's
    `CheckpointManager.reached_preemption`); False on one process."""
    self.reached_sync_point = reached_sync_point
    self.signal_name = None
    self.previous = {}

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    ours = (signal.SIGINT,) if jax.process_count() > 1 else SIGNALS
    for signum in ours:
      self.previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc):
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)
    self.previous = {}

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      print(f"{name} again: stopped at once, without saving; rerun the same command to resume "
            "from the latest checkpoint", file=sys.stderr, flush=True)
      os._exit(EXIT_ABORTED)  # pylint: disable=protected-access
    self.signal_name = name  # the line comes with the checkpoint (`errors.Preempted`)
    if jax.process_count() > 1:  # let jax's preemption service tell every process
      os.kill(os.getpid(), signal.SIGTERM)

  def requested(self, step: int) -> bool:
    """True at the step boundary where the run is to save and stop."""
    if jax.process_count() > 1:
      if self.reached_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None
