"""The workdir lock: one live run per workdir.

Two runs writing one workdir interleave their checkpoints, metrics and summary, and each
truncates the other's metrics. So a run holds an exclusive `fcntl.flock` on WORKDIR/lock.<process
index> from just after its config resolved (before its first write) to its end; a second run on
the same workdir is refused in one line naming the holder (pid, host, start time) and the lock
file. In a process group every process locks its own file (they share the workdir legitimately),
so a second group is refused on every process.

A stale lock needs no detection: the kernel drops a flock when its process dies, however it dies
(kill -9 included), so the next run simply takes it. The holder's line stays in the file until a
clean release empties it; a run that finds a line there took over from a process that ended
without releasing, and says so. flock works on local disks and NFSv4; not on object stores.
"""
import datetime
import fcntl
import logging
import os
import socket

from research.errors import UserError

log = logging.getLogger(__name__)


def lock_path(workdir: str, process_index: int) -> str:
  return os.path.join(workdir, f"lock.{process_index}")


def check_not_in_use(workdir: str, process_index: int = 0):
  """Raises the in-use `UserError` if a live run holds the workdir; writes nothing (`resolve`
  calls it first, so a second run hears that, not how its config differs)."""
  try:
    with open(lock_path(workdir, process_index)) as f:
      try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
      except BlockingIOError:
        raise _in_use(workdir, f) from None
  except (FileNotFoundError, NotADirectoryError):
    pass


def _in_use(workdir: str, file) -> UserError:
  file.seek(0)
  holder = file.read().strip() or "another process (it has not written its name yet)"
  return UserError(f"workdir {workdir!r} is in use by {holder} (lock file {file.name}); wait for "
                   "that run to end, or use another --workdir")


class WorkdirLock:
  """Held from `WorkdirLock(workdir, process_index)` until `release()` (or the process's end)."""

  def __init__(self, workdir: str, process_index: int = 0):
    self.path = lock_path(workdir, process_index)
    try:
      self.file = open(self.path, "a+")  # pylint: disable=consider-using-with  (held until release)
    except OSError as e:
      raise UserError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from None
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      error = _in_use(workdir, self.file)
      self.file.close()
      raise error from None
    previous = self._read()
    if previous:
      log.warning("workdir lock %s: its last holder, %s, ended without releasing it (killed?); "
                  "taking it over", self.path, previous)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    self.file.flush()

  def _read(self) -> str:
    self.file.seek(0)
    return self.file.read().strip()

  def release(self):
    """Empties the file (a clean end) and unlocks it; the file stays (see the module doc)."""
    if self.file.closed:
      return
    self.file.seek(0)
    self.file.truncate()
    self.file.flush()
    fcntl.flock(self.file, fcntl.LOCK_UN)
    self.file.close()
