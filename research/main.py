r"""Command line: `python -m research.main --config=configs/FILE.py[:ARGS] --workdir=DIR`.

Flags:
  --config     a config file, optionally with arguments after ':' (see its docstring), then any
               number of overrides `--config.SECTION.KEY=VALUE` (the config is locked: a
               misspelt key is an error, with a did-you-mean).
  --workdir    where checkpoints, metrics, TensorBoard events, the tokenizer and the summary go;
               rerunning the same command resumes from its latest checkpoint.
  --verbose    show the full traceback of a bad-input error instead of one line.
  --coordinator_address, --num_processes, --process_id
               multi-host: every process runs the same command with its own --process_id;
               each reads only its share of every batch.
  --distributed
               multi-host on a cluster JAX detects by itself (TPU pods, SLURM).
  --distributed_timeout_s
               multi-host: how long each process waits at start-up for the others to join (and
               to exchange their devices); then it ends with one line `error: ...` naming the
               coordinator, the process and the timeout (default 300).

Everything here is `research.train.run(config, workdir)` (for a continual-learning config,
`research.continual.run`), which tests and notebooks call directly.
Bad input ends with one line on stderr and exit code 2; nothing already written is touched.
A SIGTERM/SIGINT saves a checkpoint at the next step (during the final evaluation: waits for the
last save) and exits with 3 (rerun to resume or finish); a divergence exits with 4 without
saving; a checkpoint that cannot be written (disk full, unwritable) exits with 5, the checkpoints
before it intact; a second signal exits at once with 6 (research/errors.py).
"""
import difflib
import json
import logging
import math
import os
import socket
import sys
import threading

from absl import app, flags
from ml_collections import config_flags

from research.command_line import parse_flags
from research.errors import EXIT_SAVE_FAILED, RunStopped, SaveFailed, UserError, exit_now
from research.errors import exit_with as fail  # a bad input: one line on stderr, exit code 2

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mlm.py:runlocal.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-host: host:port of process 0; with --num_processes and --process_id "
                    "calls jax.distributed.initialize (leave unset on TPU pods / SLURM and pass "
                    "--distributed to auto-detect).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detected cluster).")
flags.DEFINE_integer("distributed_timeout_s", 300,
                     "Multi-host: seconds each process waits at start-up for every process to "
                     "join (jax.distributed.initialize's initialization_timeout) and to exchange "
                     "devices; then one line `error: ...` and exit code 2.", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])

def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; did you mean {_suggest(argv[1])}?")
  configure_logging()
  from research import continual, train  # pylint: disable=g-import-not-at-top  (jax after flags)
  if FLAGS.distributed or FLAGS.coordinator_address:
    join_process_group()
  try:
    # A continual-learning config (configs/continual.py) trains its stages one after another.
    run = continual.run if FLAGS.config.get("continual") else train.run
    summary = run(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    if FLAGS.verbose:
      raise
    fail(e)
  except SaveFailed as e:  # at once: orbax's exit handlers would wait on the failed save again
    if FLAGS.verbose:
      raise
    exit_now(e, EXIT_SAVE_FAILED)
  except RunStopped as stop:  # preempted (saved) or diverged (not saved): its own exit code
    print(stop, file=sys.stderr, flush=True)
    sys.exit(stop.exit_code)
  print(json.dumps(summary, indent=2, sort_keys=True))


def join_process_group():
  """jax.distributed.initialize and the devices' exchange, bounded by --distributed_timeout_s.

  jax aborts a process whose group does not form (SIGABRT and a C++ stack, after its own
  timeout), so a watchdog thread ends it first: one line naming the coordinator, this process,
  the timeout and what is missing, exit code 2. jax's own timeouts are set a minute later.
  """
  import jax  # pylint: disable=g-import-not-at-top
  timeout, address = FLAGS.distributed_timeout_s, FLAGS.coordinator_address
  later = timeout + 60
  jax.config.update("jax_cpu_get_local_topology_timeout_minutes", math.ceil(later / 60))
  jax.config.update("jax_cpu_get_global_topology_timeout_minutes", math.ceil(later / 60) + 1)
  stage = ["join"]
  me = ("this process" if FLAGS.process_id is None else
        f"process {FLAGS.process_id} of {FLAGS.num_processes}")
  where = (f"{me} could not join the process group at coordinator "
           f"{address or '(auto-detected)'} within --distributed_timeout_s={timeout}")
  watchdog = threading.Timer(timeout, lambda: exit_now(f"{where}: {_missing(stage[0])}"))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(address, FLAGS.num_processes, FLAGS.process_id,
                               initialization_timeout=later)
    stage[0] = "devices"
    jax.devices()  # every process's devices: the group is complete only after this
  except (RuntimeError, ValueError, TypeError) as e:  # jax's JaxRuntimeError is a RuntimeError
    if FLAGS.verbose:
      raise
    exit_now(f"{where}: {' '.join(str(e).split())[:300]}")
  finally:
    watchdog.cancel()


def _missing(stage: str) -> str:
  """What this process was still waiting for when its time was up."""
  n, me, address = FLAGS.num_processes, FLAGS.process_id, FLAGS.coordinator_address
  if stage == "devices":
    return ("every process joined, but not all of them started their devices (one may have "
            "failed: see its own output)")
  if not address or n is None:
    return "not every process of the detected cluster joined"
  if me == 0:
    others = "process 1 did not join" if n == 2 else f"not all of processes 1..{n - 1} joined"
    return (f"{others} (each must run with --coordinator_address={address} --num_processes={n} "
            "and its own --process_id)")
  host, _, port = address.rpartition(":")
  try:
    socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
  except (OSError, ValueError):
    return f"nothing answers at {address} (is process 0 running there, with that port?)"
  return f"the coordinator answers, but not all {n} processes joined"


def configure_logging():
  """Our INFO lines on stderr; libraries (orbax, jax) only from WARNING up, less the noise of a
  failed checkpoint read or write (which the run reports itself, in one line)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_logger().addFilter(_not_an_orbax_error)
  logging.getLogger("asyncio").addFilter(_not_an_orbax_task)
  sys.unraisablehook = _unless_failed_checkpoint_io
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
  ours = logging.getLogger("research")
  ours.handlers[:] = [handler]
  ours.setLevel(logging.INFO)
  ours.propagate = False


def _not_an_orbax_error(record) -> bool:
  """orbax logs a failed read or write at ERROR, with tracebacks, from each of its threads; the
  run reports those failures itself, in one line (a damaged checkpoint, `SaveFailed`)."""
  return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _not_an_orbax_task(record) -> bool:
  """The same abandoned reads, when their asyncio task is collected: asyncio logs 'Task exception
  was never retrieved' with the task's coroutine (defined in orbax) and its traceback."""
  orbax = f"{os.sep}orbax{os.sep}"
  tb = record.exc_info[1].__traceback__ if record.exc_info and record.exc_info[1] else None
  while tb is not None:
    if orbax in tb.tb_frame.f_code.co_filename:
      return False
    tb = tb.tb_next
  return orbax not in record.getMessage()


def _unless_failed_checkpoint_io(unraisable):
  """After a failed checkpoint read or write, orbax's other reads/writes of that checkpoint are
  abandoned: their coroutines end in errors nobody awaits ('Exception ignored in: <coroutine
  ...>'), and tensorstore posts their results to an event loop already closed ('Event loop is
  closed'). Those are dropped (the run reports the failure in one line); any other unraisable
  exception is shown as usual."""
  error, where = unraisable.exc_value, unraisable.object
  closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
  code = getattr(where, "cr_code", None)
  orbax_coroutine = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
  if not (closed_loop or orbax_coroutine):
    sys.__unraisablehook__(unraisable)


def _suggest(arg: str) -> str:
  options = ["--config", "--workdir", "--verbose", "--config.train.steps"]
  match = difflib.get_close_matches(arg.split("=")[0], options, n=1)
  return repr(match[0]) if match else "a --flag=value"


def entry():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry()
