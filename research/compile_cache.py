"""Compile once: JAX's persistent compilation cache for every program a command compiles.

`use(cache_dir)` turns on JAX's cache in `cache_dir` for the rest of the process: a program
(a train or eval step, predict's forward, a decoding loop) that any earlier process on this
machine compiled with the same shapes, shardings, compiler options, jax/XLA version and devices
is loaded from there instead of compiled by XLA. A resumed run, a rerun, the next command on the
same workdir and the test suite's many short runs reuse what was compiled. Results never change:
an entry is the executable XLA produced for exactly that program (tests/test_compile_cache.py
compares losses and parameters of a cold and a warm run with `==`). Tracing and lowering (Python)
still run each time: the cache key is the lowered program.

Where: `config.compile.cache_dir` for the commands that take a --config (research.main,
research.aot, research.cost, research.memory), `--compile_cache_dir` for the others; both default
to $RESEARCH_COMPILE_CACHE_DIR, else `~/.cache/research/compile` (`default_dir`). An empty
value turns the cache off. Clear it with `rm -r` of the folder at any time. It is kept under
`MAX_BYTES` by `trim`, the least recently used entries first, at most once per
`TRIM_EVERY_SECONDS` (when a process starts using the folder), not by jax's own eviction: that
reads the whole folder under a file lock at every program it writes (60 small programs written
into a folder of 3,300 entries: 18 s of CPU, 3.4 s without), so that a test suite's later tests
were the slower the more its earlier ones had compiled.

A cache that cannot be used never fails a run: an unwritable folder costs one warning line and
the process compiles without it; a damaged entry costs one warning line, is removed, and its
program is compiled afresh (and cached again).

`Tally` reads jax's own monitoring events to split start-up time into tracing, lowering and XLA
compilation (or loading from the cache), and to say whether a run's programs came from the cache
(`perf/compile_cache` in summary.json: 'warm', 'cold', 'partial' or 'off').

XLA's TPU compiler used without a TPU (`research.aot`, `jax.experimental.topologies`) writes
entries JAX cannot load back (it has no TPU client to load them on): `bypassed()` keeps JAX's
cache out of such compiles; research/tpu.py caches their figures instead (`figures_path`).
"""
import collections
import contextlib
import dataclasses
import glob
import hashlib
import logging
import os
import re
import threading
import time
import warnings

log = logging.getLogger(__name__)
# jax is imported where it is used: a command may import this module (for `default_dir`) before
# it sets the environment jax reads when it is first imported (JAX_PLATFORMS, XLA_FLAGS).

ENV = "RESEARCH_COMPILE_CACHE_DIR"
DEFAULT_DIR = os.path.join("~", ".cache", "research", "compile")
MAX_BYTES = 8 * 2**30  # then the least recently used entries go (`trim`)
TRIM_EVERY_SECONDS = 3600
_STAMP = ".trimmed"  # its modification time: when the folder was last trimmed


def default_dir() -> str:
  """$RESEARCH_COMPILE_CACHE_DIR if set (empty: off), else `~/.cache/research/compile`."""
  return os.environ.get(ENV, DEFAULT_DIR)


def section():
  """The `compile` config section (research/config_lib.py `common`)."""
  return {"cache_dir": default_dir()}


def define_flag():
  """`--compile_cache_dir` of the commands without a --config (predict, generate, compress,
  convert, the benchmarks): defaults to `default_dir()`; empty turns the cache off."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("compile_cache_dir", default_dir(),
                      "Where compiled programs are kept and reused across runs (JAX's persistent "
                      f"compilation cache); empty: off. Default: ${ENV}, else {DEFAULT_DIR}.")


def use_flag() -> str | None:
  """`use` of the command's `--compile_cache_dir` (see `define_flag`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  return use(flags.FLAGS.compile_cache_dir)


def of_config(config) -> str:
  """A run config's `compile.cache_dir` (a config without the section: `default_dir()`)."""
  section_ = config.get("compile")
  return default_dir() if section_ is None else section_.get("cache_dir", default_dir())


_lock = threading.Lock()
_state = {"dir": None, "enabled_once": False, "hook": False}


def use(cache_dir: str | None) -> str | None:
  """Caches every program this process compiles from now on in `cache_dir` (None or '': off).

  Returns the folder in use (None: off). Calling it again with the same folder changes nothing;
  another folder takes over from the next compile. A folder that cannot be written to is one
  warning line, and the cache stays off.
  """
  wanted = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else None
  if wanted and "://" not in cache_dir:
    problem = _unwritable(wanted)
    if problem:
      log.warning("compile cache off: cannot write to %s (%s); every program compiles afresh",
                  wanted, problem)
      wanted = None
  import jax  # pylint: disable=g-import-not-at-top
  with _lock:
    if wanted == _state["dir"] and _state["enabled_once"]:
      return wanted
    _state.update(dir=wanted, enabled_once=True)
    jax.config.update("jax_compilation_cache_dir", wanted)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", -1)  # no eviction at every write
    # Not XLA's GPU autotuning cache: jax would put it inside the folder and its path into every
    # entry's key, so that a copied or moved cache (a CI cache restored elsewhere) was cold.
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    _reset_jax_cache()
    _report_damaged_entries()
  if wanted and "://" not in cache_dir:
    trim_now_and_then(wanted)
  return wanted


def trim_now_and_then(directory: str, every_seconds: float = TRIM_EVERY_SECONDS,
                      max_bytes: int = MAX_BYTES) -> bool:
  """`trim(directory)` unless a process did within `every_seconds` (the stamp file says when);
  returns whether it trimmed. The stamp is set first, so processes starting together trim once."""
  stamp = os.path.join(directory, _STAMP)
  try:
    if time.time() - os.stat(stamp).st_mtime < every_seconds:
      return False
  except OSError:
    pass  # never trimmed
  try:
    with open(stamp, "wb"):
      pass
  except OSError:
    return False
  trim(directory, max_bytes)
  return True


def trim(directory: str, max_bytes: int = MAX_BYTES) -> int:
  """Removes the least recently used programs until the folder holds at most `max_bytes`;
  returns how many. Last use: a file's access time where the file system records reads (Linux's
  default `relatime`: the first read after a write, then at most daily), else when it was
  written. jax names an entry '<key>-cache' (older versions added '<key>-atime' beside it)."""
  entries = collections.defaultdict(lambda: [0.0, 0, []])  # key: [last use, bytes, paths]
  try:
    names = os.listdir(directory)
  except OSError:
    return 0
  for name in names:
    key, dash, suffix = name.rpartition("-")
    if not dash or suffix not in ("cache", "atime"):
      continue
    path = os.path.join(directory, name)
    try:
      stat = os.stat(path)
    except OSError:
      continue  # another process removed it
    entry = entries[key]
    entry[0] = max(entry[0], stat.st_atime, stat.st_mtime)
    entry[1] += stat.st_size
    entry[2].append(path)
  total = sum(size for _, size, _ in entries.values())
  removed = 0
  for _, size, paths in sorted(entries.values()):
    if total <= max_bytes:
      break
    for path in paths:
      try:
        os.remove(path)
      except OSError:
        pass  # another process removed it
    total -= size
    removed += 1
  if removed:
    log.info("compile cache: removed the %d least recently used programs from %s (over %.1f GiB)",
             removed, directory, max_bytes / 2**30)
  return removed


def in_use() -> str | None:
  """The folder `use` turned on, or None."""
  return _state["dir"]


def _unwritable(directory: str) -> str | None:
  """Why `directory` cannot hold cache entries, or None."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write_test.{os.getpid()}.{threading.get_ident()}")
    with open(probe, "wb") as f:
      f.write(b"ok")
    os.remove(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None


@contextlib.contextmanager
def bypassed():
  """Compiles inside without JAX's cache (neither read nor written), e.g. for timing a cold
  compile or for XLA's TPU compiler without a TPU; the cache is back as it was after."""
  import jax  # pylint: disable=g-import-not-at-top
  with _lock:
    jax.config.update("jax_enable_compilation_cache", False)
    _reset_jax_cache()
  try:
    yield
  finally:
    with _lock:
      jax.config.update("jax_enable_compilation_cache", True)
      _reset_jax_cache()


def _reset_jax_cache():
  """jax decides at its first compile whether its process uses a cache, once: again now
  (without jax's INFO line about it, which absl's handler would show)."""
  from jax.experimental import compilation_cache  # pylint: disable=g-import-not-at-top
  jax_log = logging.getLogger("jax._src.compilation_cache")
  level = jax_log.level
  jax_log.setLevel(logging.WARNING)
  try:
    compilation_cache.compilation_cache.reset_cache()
  finally:
    jax_log.setLevel(level)


def loadable(devices) -> bool:
  """Whether jax can run programs on `devices` here (so load them from its cache): not the
  compile-only devices of a TPU slice described without a TPU (`jax.experimental.topologies`)."""
  import jax  # pylint: disable=g-import-not-at-top
  device = next(iter(devices))
  try:
    return device.client is jax.devices(device.platform)[0].client
  except RuntimeError:  # no such backend on this machine
    return False


def compiling_for(devices):
  """A context to compile programs for `devices` in: JAX's cache as set where jax can load what
  it compiles for them, else `bypassed()`."""
  return contextlib.nullcontext() if loadable(devices) else bypassed()


# ---------------------------------------------------------------------------------------------
# A damaged entry: jax warns (a Python warning, several lines) and compiles afresh, but never
# rewrites the entry. Here: one log line, and the entry removed so that it is cached again.
# ---------------------------------------------------------------------------------------------
_READ_ERROR = re.compile(r"Error (reading|writing) persistent compilation cache entry for "
                         r"'(?P<module>[^']+)': (?P<error>.*)", re.S)


def _report_damaged_entries():
  """Installs (once) the hook that turns jax's cache warnings into `_on_cache_warning`."""
  if _state["hook"]:
    return
  _state["hook"] = True
  shown = warnings.showwarning

  def showwarning(message, category, filename, lineno, file=None, line=None):
    match = _READ_ERROR.match(str(message))
    if match is None:
      return shown(message, category, filename, lineno, file, line)
    _on_cache_warning(match["module"], match[1], match["error"])
    return None

  warnings.showwarning = showwarning


def _on_cache_warning(module: str, action: str, error: str):
  error = " ".join(error.split())[:200]
  directory = _state["dir"]
  if action == "reading" and directory:
    removed = remove_entries(directory, module)
    log.warning("compile cache: the entry for %s in %s could not be read (%s): removed %d "
                "file(s), compiled afresh", module, directory, error, removed)
  else:
    log.warning("compile cache: %s the entry for %s failed (%s); the run goes on", action,
                module, error)


def remove_entries(directory: str, module: str) -> int:
  """Removes the cache files of program `module` (jax names them '<module>-<key>-...')."""
  removed = 0
  for path in glob.glob(os.path.join(glob.escape(directory), glob.escape(module) + "-*")):
    try:
      os.remove(path)
      removed += 1
    except OSError:
      pass  # another process removed it first
  return removed


# ---------------------------------------------------------------------------------------------
# Where start-up time goes: jax's monitoring events, summed per process.
# ---------------------------------------------------------------------------------------------
_DURATIONS = {"/jax/core/compile/jaxpr_trace_duration": "trace_seconds",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_seconds",
              "/jax/core/compile/backend_compile_duration": "xla_seconds"}
_COUNTS = {"/jax/core/compile/backend_compile_duration": "programs",
           "/jax/compilation_cache/cache_hits": "cache_hits"}
_totals = collections.Counter()
_listening = []


def _listen():
  if _listening:
    return
  _listening.append(True)
  import jax  # pylint: disable=g-import-not-at-top

  def on_duration(event, seconds, **_):
    if event in _DURATIONS:
      _totals[_DURATIONS[event]] += seconds
    if event in _COUNTS:
      _totals[_COUNTS[event]] += 1

  def on_event(event, **_):
    if event in _COUNTS:
      _totals[_COUNTS[event]] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)


@dataclasses.dataclass
class Tally:
  """What compiling cost from `start()` on: tracing, lowering, XLA (or loading from the cache)."""
  since: collections.Counter

  @classmethod
  def start(cls) -> "Tally":
    _listen()
    return cls(collections.Counter(_totals))

  def counts(self) -> dict:
    return {k: _totals[k] - self.since[k] for k in (*_DURATIONS.values(), *_COUNTS.values())}

  def summary(self) -> dict:
    """`perf/...` keys of summary.json: the seconds of each part and the cache's share."""
    c = self.counts()
    return {"perf/compile_cache": temperature(c["programs"], c["cache_hits"], in_use()),
            "perf/compile_cache_hits": c["cache_hits"], "perf/programs_compiled": c["programs"],
            "perf/trace_seconds": c["trace_seconds"], "perf/lower_seconds": c["lower_seconds"],
            "perf/xla_compile_seconds": c["xla_seconds"]}


def temperature(programs: int, hits: int, directory: str | None) -> str:
  """'off' (no cache), 'warm' (every program loaded from it), 'cold' (none), else 'partial'."""
  if directory is None:
    return "off"
  if programs and hits >= programs:
    return "warm"
  return "cold" if hits == 0 else "partial"


# ---------------------------------------------------------------------------------------------
# Figures of a compile that JAX cannot cache (a TPU compile without a TPU): research/tpu.py.
# ---------------------------------------------------------------------------------------------
def figures_path(lowered_text: str, *key_parts) -> str | None:
  """Where the figures of the compile of `lowered_text` (with `key_parts`: the target, the
  compiler's version and options) are kept, or None with the cache off."""
  directory = in_use()
  if directory is None or "://" in directory:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(lowered_text.encode())
  for part in (jax.__version__, *key_parts):
    digest.update(f"\0{part}".encode())
  return os.path.join(directory, "figures", digest.hexdigest() + ".json")
