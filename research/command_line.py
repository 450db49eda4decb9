"""A command's `--config` flags parsed with one-line errors (research.main, research.cost).

`parse_flags(argv)` is an absl `flags_parser`: it parses the flags the calling module defined
(`config_flags.DEFINE_config_file('config', lock_config=True)` and its own), and ends a bad flag,
a missing or unparsable config file, a misspelt config key (with ml_collections' did-you-mean) or
a renamed key with one line on stderr and exit code 2 (`errors.exit_with`); `--verbose` shows the
traceback instead.
"""
import os

from absl import flags

from research.errors import UserError
from research.errors import exit_with as fail

FLAGS = flags.FLAGS


def _unquote(line: str) -> str:
  line = line.strip()
  return line[1:-1] if len(line) > 1 and line[0] == line[-1] and line[0] in "'\"" else line


def _one_line(error: Exception, argv) -> str:
  """A flag/config error as one readable line (keeps ml_collections' did-you-mean)."""
  text = str(error.args[0]) if error.args else str(error)
  lines = [_unquote(l) for l in _unquote(text).replace("\\n", "\n").splitlines() if l.strip()]
  if not lines:
    return type(error).__name__
  first, rest = lines[0], [l for l in lines[1:] if l.startswith("Did you mean")]
  if "Other fields present" in first:  # drop the dump of every field
    first = first.split(". Other fields present")[0]
  if isinstance(error, (KeyError, AttributeError)):  # an unknown key: name the flag it is in
    flag = next((a.split("=")[0] for a in argv
                 if a.startswith("--config.") and first in a.split("=")[0].split(".")), None)
    first = f"{flag}: no config key {first!r}" if flag else f"no config key {first!r}"
  return "; ".join([first] + [l[0].lower() + l[1:] for l in rest])


# Config keys that were renamed: the old spelling fails with the new one.
RENAMED = {"init.from": "init.weights"}  # 'from' is a Python keyword: flags cannot parse it


def check_config_flags(argv):
  """What ml_collections reports badly: a missing or unparsable config file, renamed keys."""
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition("=")
    if name.lstrip("-") == "config" and arg.startswith("-"):
      if not eq:  # `--config PATH`
        value = argv[i + 1] if i + 1 < len(argv) else ""
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        raise UserError(f"--config: no such config file {path!r}")
      with open(path, "rb") as f:
        source = f.read()
      try:
        compile(source, path, "exec")
      except (SyntaxError, ValueError) as e:
        where = f"{path}:{e.lineno}" if getattr(e, "lineno", None) else path
        raise UserError(f"--config: {where}: {getattr(e, 'msg', e)} (a Python syntax error in "
                        "the config file)") from None
    for old, new in RENAMED.items():
      if name.lstrip("-") == f"config.{old}" or name.lstrip("-").startswith(f"config.{old}."):
        raise UserError(f"--config.{old} was renamed: use --config.{new}")


def parse_flags(argv):
  verbose = "--verbose" in argv
  try:
    check_config_flags(argv[1:])
    return FLAGS(argv)
  except UserError as e:
    if verbose:
      raise
    fail(e)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    if verbose:
      raise
    cause = e.__cause__ or e.__context__ or e
    if "Did you mean" in str(cause) or "Did you mean" not in str(e):  # the more helpful one
      e = cause if isinstance(cause, (KeyError, AttributeError)) else e
    fail(f"bad flags: {_one_line(e, argv)}")
