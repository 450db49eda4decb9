"""N `python -m research.main` processes as one jax.distributed group on loopback, for tests.

Every multi-process test goes through `ProcessGroup` (or `run_group`), which:
  - gives each process a clean environment: the parent's JAX/XLA/TPU/CUDA/gRPC settings and
    proxies are dropped (a proxy routes gRPC's loopback connection to the coordinator away; a
    parent's XLA_FLAGS or JAX_PLATFORMS would change the devices), then
    `--xla_force_host_platform_device_count=DEVICES` and `JAX_PLATFORMS=cpu` are set;
  - holds the coordinator's port for the group's lifetime (`reserved_port`): nothing else on the
    machine is handed that port between choosing it and process 0 binding it;
  - writes each process's stdout and stderr to files, not pipes (a process blocked on a full pipe
    nobody reads would stall the whole group);
  - waits with a deadline: a process still running then is killed, and once one process has
    failed the others get `grace_s` to end on their own (they usually wait for the failed one);
  - `GroupResult.check()` raises an AssertionError that shows every process's exit code, its
    time and the tail of its stderr, naming the processes that were killed at the deadline.

Typical use:
    result = run_group(FLAGS + [f"--workdir={tmp_path}"], num_processes=2)
    result.check()
"""
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from conftest import REPO

# Parent settings a launched process must not inherit (prefixes of variable names).
INHERITED_NOT = ("JAX_", "XLA_", "TF_", "TPU_", "LIBTPU", "CUDA_", "NCCL_", "GRPC_")
TAIL_CHARS = 3000  # of each process's stderr in a failure message


def clean_env(devices: int) -> dict:
  """os.environ without JAX/XLA/accelerator/gRPC settings and proxies; `devices` CPU devices."""
  env = {k: v for k, v in os.environ.items()
         if not k.upper().startswith(INHERITED_NOT) and not k.lower().endswith("_proxy")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return env


@contextlib.contextmanager
def reserved_port():
  """A loopback port, held (bound, never listening) until the block ends.

  Choosing a free port and releasing it before the coordinator binds it is a race: any socket on
  the machine may be handed it meanwhile. While this socket is bound the kernel gives the port to
  no one else (no `bind(port 0)`, no outgoing connection's local port); the coordinator can bind
  it all the same because gRPC servers set SO_REUSEPORT, as this socket does (same user).
  """
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]


@dataclasses.dataclass
class ProcessResult:
  index: int
  argv: list
  returncode: int | None  # None: killed at the deadline
  seconds: float
  stdout: str
  stderr: str
  killed: str = ""  # why it was killed, if it was

  def describe(self) -> str:
    if self.killed:
      status = f"killed after {self.seconds:.0f} s ({self.killed})"
    else:
      status = f"exit code {self.returncode} after {self.seconds:.0f} s"
    tail = self.stderr[-TAIL_CHARS:].rstrip() or "(empty)"
    return f"--- process {self.index}: {status}; stderr tail:\n{tail}"


@dataclasses.dataclass
class GroupResult:
  processes: list
  port: int
  deadline_s: float

  @property
  def ok(self) -> bool:
    return all(p.returncode == 0 for p in self.processes)

  def report(self) -> str:
    bad = [p.index for p in self.processes if p.returncode != 0]
    killed = [p.index for p in self.processes if p.killed]
    head = (f"process group on 127.0.0.1:{self.port} failed: process(es) {bad} did not exit 0"
            + (f"; {killed} still running at the end (killed)" if killed else ""))
    return "\n".join([head] + [p.describe() for p in self.processes])

  def check(self):
    """AssertionError with every process's exit code and stderr tail unless all exited 0."""
    if not self.ok:
      raise AssertionError(self.report())


class ProcessGroup:
  """`num_processes` processes of `python -m research.main FLAGS --coordinator_address=... ...`.

  `only`: start just these process ids (the others never join: for testing that case).
  `num_processes=1` runs one plain process (no coordinator flags), with the same environment,
  deadline and report.
  """

  def __init__(self, flags, num_processes=2, *, devices=2, deadline_s=300, grace_s=20,
               distributed_timeout_s=None, only=None):
    self.flags, self.num_processes, self.devices = list(flags), num_processes, devices
    self.deadline_s, self.grace_s = deadline_s, grace_s
    self.distributed_timeout_s = distributed_timeout_s
    self.only = list(range(num_processes)) if only is None else list(only)
    self._stack = contextlib.ExitStack()
    self._running = []  # a _Running per started process
    self.port = None

  def argv(self, index: int) -> list:
    argv = [sys.executable, "-m", "research.main", *self.flags]
    if self.num_processes > 1:
      argv += [f"--coordinator_address=127.0.0.1:{self.port}",
               f"--num_processes={self.num_processes}", f"--process_id={index}"]
      if self.distributed_timeout_s is not None:
        argv.append(f"--distributed_timeout_s={self.distributed_timeout_s}")
    return argv

  def start(self) -> "ProcessGroup":
    self.port = self._stack.enter_context(reserved_port())
    logs = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="process_group_"))
    env = clean_env(self.devices)
    for index in self.only:
      argv = self.argv(index)
      out = self._stack.enter_context(open(os.path.join(logs, f"{index}.out"), "w+"))
      err = self._stack.enter_context(open(os.path.join(logs, f"{index}.err"), "w+"))
      proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, start_new_session=True)
      self._running.append(_Running(index, argv, proc, out, err, time.time()))
    return self

  def send_signal(self, index: int, signum: int):
    """Sends `signum` to process `index` alone (not its session)."""
    next(r for r in self._running if r.index == index).proc.send_signal(signum)

  def wait(self) -> GroupResult:
    """Waits for every process, at most `deadline_s` from the start; kills what is left."""
    try:
      deadline = min(r.start for r in self._running) + self.deadline_s
      while True:
        now = time.time()
        for r in self._running:
          if r.seconds is None and r.proc.poll() is not None:
            r.seconds = now - r.start
        left = [r for r in self._running if r.seconds is None]
        failed = any(r.proc.returncode not in (0, None) for r in self._running)
        if not left:
          break
        if failed and deadline > now + self.grace_s:  # the rest usually wait for the failed one
          deadline = now + self.grace_s
        if now > deadline:
          for r in left:
            _kill(r.proc)
            r.seconds = now - r.start
            r.killed = (f"still running {self.grace_s:.0f} s after another process failed"
                        if failed else f"still running at the {self.deadline_s:.0f} s deadline")
          break
        time.sleep(0.1)
      return GroupResult([r.result() for r in self._running], self.port, self.deadline_s)
    finally:
      for r in self._running:
        _kill(r.proc)
      self._stack.close()


@dataclasses.dataclass
class _Running:
  index: int
  argv: list
  proc: subprocess.Popen
  out: object
  err: object
  start: float
  seconds: float | None = None  # when it ended (or was killed), from its start
  killed: str = ""

  def result(self) -> ProcessResult:
    return ProcessResult(self.index, self.argv, None if self.killed else self.proc.returncode,
                         self.seconds, _read(self.out), _read(self.err), self.killed)


def run_group(flags, num_processes=2, **kwargs) -> GroupResult:
  """Starts a `ProcessGroup(flags, num_processes, **kwargs)` and waits for it."""
  return ProcessGroup(flags, num_processes, **kwargs).start().wait()


def _kill(proc):
  if proc.poll() is None:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)  # its own session: the process and anything it started
    proc.wait()


def _read(f) -> str:
  f.flush()
  f.seek(0)
  return f.read()
