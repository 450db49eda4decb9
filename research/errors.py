"""The one exception type for mistakes a user can fix.

Anything raised as `UserError` reaches the command line as a single line on stderr and a non-zero
exit code (`research.main`); every other exception is a bug and keeps its traceback. Raise it as
early as possible, before anything is written, so that bad input never damages a workdir.
"""


class UserError(Exception):
  """Bad input: a config value, a path, a dataset, or a workdir that cannot be used as asked."""
