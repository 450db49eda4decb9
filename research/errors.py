"""How a command ends other than by finishing: bad input, or a run stopped on purpose.

Anything raised as `UserError` reaches the command line as a single line on stderr and a non-zero
exit code (`research.main`); every other exception is a bug and keeps its traceback. Raise it as
early as possible, before anything is written, so that bad input never damages a workdir.

`RunStopped` (`Preempted`, `Diverged`) ends a run that started training: one line on stderr and
its own exit code, so a scheduler can tell "rerun me" (3) from "fix the config" (4).

Exit codes of `python -m research.main`:
  0  finished
  2  bad input (`EXIT_BAD_INPUT`)
  3  preempted: a SIGTERM/SIGINT, checkpoint saved; rerun the same command (`EXIT_PREEMPTED`)
  4  diverged: a non-finite loss or gradient, nothing saved after it (`EXIT_DIVERGED`)
  5  a checkpoint could not be written (`SaveFailed`): the checkpoints before it intact
  6  a second SIGTERM/SIGINT: stopped at once, without a save (`EXIT_ABORTED`)
"""
import contextlib


class UserError(Exception):
  """Bad input: a config value, a path, a dataset, or a workdir that cannot be used as asked."""


EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 3
EXIT_DIVERGED = 4
EXIT_SAVE_FAILED = 5  # a checkpoint could not be written (disk full, unwritable): `SaveFailed`
EXIT_ABORTED = 6  # a second SIGTERM/SIGINT: no save


class RunStopped(Exception):
  """A run that stopped at `step`, before its last, on purpose; `str()` is the line to print."""
  exit_code: int
  outcome: str

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class Preempted(RunStopped):
  """A SIGTERM/SIGINT (or the multi-host preemption sync point): saved, resumable."""
  exit_code, outcome = EXIT_PREEMPTED, "preempted"


class Diverged(RunStopped):
  """Non-finite loss, gradients or parameters (`train.nonfinite`); nothing saved after them."""
  exit_code, outcome = EXIT_DIVERGED, "diverged"


class SaveFailed(Exception):
  """Writing a checkpoint failed (disk full, a file-size limit, an unwritable directory).

  The run stops there with one line naming the step that failed, the cause and the last
  checkpoint that is intact, and exit code `EXIT_SAVE_FAILED`; rerunning resumes from that one.
  """


@contextlib.contextmanager
def one_line_errors(verbose: bool):
  """A command's body: a `UserError` inside ends the program with `exit_with` (one line, exit
  code 2), or, with `verbose` (the commands' --verbose), with its traceback."""
  try:
    yield
  except UserError as e:
    if verbose:
      raise
    exit_with(e)


def exit_with(error) -> None:
  """Ends a command-line program on bad input: one line on stderr, exit code 2."""
  import sys  # pylint: disable=g-import-not-at-top
  print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def exit_now(error, code: int = EXIT_BAD_INPUT) -> None:
  """`exit_with` from any thread, at once: no exit handlers run (jax's would wait for the rest
  of a process group that never formed; orbax's would report a failed save again)."""
  import logging, os, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  logging.shutdown()  # flushes every log handler
  print(f"error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access
