"""The one exception type for mistakes a user can fix.

Anything raised as `UserError` reaches the command line as a single line on stderr and a non-zero
exit code (`research.main`); every other exception is a bug and keeps its traceback. Raise it as
early as possible, before anything is written, so that bad input never damages a workdir.
"""


class UserError(Exception):
  """Bad input: a config value, a path, a dataset, or a workdir that cannot be used as asked."""


EXIT_BAD_INPUT = 2
EXIT_SAVE_FAILED = 5  # a checkpoint could not be written (disk full, unwritable): `SaveFailed`


class SaveFailed(Exception):
  """Writing a checkpoint failed (disk full, a file-size limit, an unwritable directory).

  The run stops there with one line naming the step that failed, the cause and the last
  checkpoint that is intact, and exit code `EXIT_SAVE_FAILED`; rerunning resumes from that one.
  """


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
