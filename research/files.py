"""The files and directories a command reads and writes, checked before anything is written.

`research.predict` and `research.generate` read an input file and write an output file;
`research.compress`, `research.convert` and `research.data.prepare` write a directory. A path that
cannot serve (missing, a directory where a file is wanted or the reverse, binary, the input given
again as the output) is refused in one line (`UserError`) before the command loads a model or
writes a byte, and `written_when_done` writes an output file under a temporary name, so a command
that fails half-way leaves an existing output as it was. '-' is stdin or stdout.
"""
import codecs
import contextlib
import os
import sys

from research.errors import UserError

STDIO = "-"
HEAD_BYTES = 8192  # what is read of an input file to tell text from binary


def check_input(path: str, flag: str):
  """An input file that exists, is not a directory, and (a regular file) starts as UTF-8 text."""
  if path == STDIO:
    return
  if not os.path.exists(path):
    raise UserError(f"no such input file {path!r}")
  if os.path.isdir(path):
    raise UserError(f"{flag} {path!r} is a directory, not a file")
  if not os.path.isfile(path):  # a pipe (/dev/stdin, <(...)): what is read here would be lost
    return
  with open(path, "rb") as f:
    head = f.read(HEAD_BYTES)
  if b"\0" in head:
    raise UserError(f"{flag} {path!r} looks binary, not text (it has NUL bytes); expected JSON "
                    "Lines or UTF-8 text")
  try:  # incremental: a character cut at the end of `head` is not an error
    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
  except UnicodeDecodeError as e:
    raise UserError(f"{flag} {path!r} is not UTF-8 text (byte {e.start}: {e.reason}); expected "
                    "JSON Lines or UTF-8 text") from None


def check_output(path: str, flag: str, input_path: str = STDIO, input_flag: str = "--input"):
  """An output file that can be written without losing the input: not a directory, in a
  directory that exists, and not the input itself (opening it for writing would empty it)."""
  if path == STDIO:
    return
  if os.path.isdir(path):
    raise UserError(f"{flag} {path!r} is a directory; give a file to write")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f"{flag} {path!r}: no such directory {parent!r}")
  if input_path != STDIO and os.path.exists(path) and os.path.samefile(path, input_path):
    raise UserError(f"{flag} {path!r} is the {input_flag} file: writing it would erase the "
                    f"input; give another {flag}")


def check_output_dir(path: str, flag: str):
  """A directory to write into: new, or an existing directory (not a file)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag} {path!r} is a file, not a directory")


@contextlib.contextmanager
def written_when_done(path: str):
  """A text stream to `path` that replaces it only when the block ends without an error: until
  then it is a temporary file beside it (removed on an error). stdout ('-') and what is not a
  regular file (a pipe, /dev/stdout) are written directly."""
  if path == STDIO:
    yield sys.stdout
    return
  if os.path.exists(path) and not os.path.isfile(path):
    with open(path, "w", encoding="utf-8") as f:
      yield f
    return
  directory, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
  # os.open's mode 0o666 goes through the umask: the file gets a new file's usual permissions.
  with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "w",
            encoding="utf-8") as f:
    try:
      yield f
    except BaseException:
      os.remove(temporary)
      raise
  os.replace(temporary, path)
