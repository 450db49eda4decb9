"""The compile cache (research/compile_cache.py): a warm run loads every program a cold run
compiled and gives the same losses and parameters, bit for bit; a damaged entry or an unwritable
folder costs one warning line, never the run; research.aot keeps a TPU compile's figures."""
import contextlib
import json
import os
import shutil
import stat
import subprocess
import time

import numpy as np
import pytest

from conftest import run_cli
from research import checkpoint, compile_cache, params, tracking

TINY = ["--config=configs/mlm.py:runlocal", "--config.train.steps=3",
        "--config.train.batch_size=8", "--config.data.vocab_size=512",
        "--config.data.seq_len=32", "--config.model.num_layers=1",
        "--config.evals.every_steps=3", "--config.evals.batches=1", "--config.ckpt.every_steps=3",
        "--config.logging.every_steps=1", "--config.logging.progress=False",
        "--config.logging.tensorboard=False"]
KEYS = ("train/loss", "train/grad_norm", "eval/mlm/loss", "eval/mlm/accuracy")


def _run(workdir, cache_dir, *flags):
  """`python -m research.main` on TINY with the compile cache in `cache_dir`: (summary, stderr)."""
  proc = run_cli(*TINY, f"--workdir={workdir}", *flags,
                 env={compile_cache.ENV: str(cache_dir)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f), proc.stderr


def _assert_same_run(workdir, reference):
  got, want = tracking.read_metrics(workdir), tracking.read_metrics(reference)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]
  for a, b in zip(got, want):
    for key in KEYS:
      assert a.get(key) == b.get(key), (a["step"], key, a.get(key), b.get(key))
  ours, theirs = (params.flatten(checkpoint.workdir_params(w)) for w in (workdir, reference))
  assert ours.keys() == theirs.keys()
  for path in ours:
    assert np.array_equal(ours[path], theirs[path]), path


def _entries(cache_dir):
  return sorted(p for p in os.listdir(cache_dir) if p.endswith("-cache"))


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
  """(workdir, cache folder, summary) of TINY's run with an empty cache."""
  root = tmp_path_factory.mktemp("cold")
  summary, _ = _run(root / "run", root / "cache")
  return root / "run", root / "cache", summary


def test_a_warm_run_loads_every_program_and_changes_nothing(cold, tmp_path):
  workdir, cache, summary = cold
  assert summary["perf/compile_cache"] == "cold" and summary["perf/compile_cache_hits"] == 0
  assert len(_entries(cache)) == summary["perf/programs_compiled"] > 0
  warm, _ = _run(tmp_path / "warm", cache)
  assert warm["perf/compile_cache"] == "warm"
  assert warm["perf/compile_cache_hits"] == warm["perf/programs_compiled"] == \
      summary["perf/programs_compiled"]
  assert warm["perf/xla_compile_seconds"] < summary["perf/xla_compile_seconds"] / 3
  _assert_same_run(tmp_path / "warm", workdir)


def test_damaged_entries_cost_a_line_each_and_are_cached_again(cold, tmp_path):
  workdir, cache, _ = cold
  cache = shutil.copytree(cache, tmp_path / "cache")  # a cache moved elsewhere is as good
  damaged = _entries(cache)
  for name in damaged:
    (cache / name).write_bytes(b"garbage")
  summary, stderr = _run(tmp_path / "damaged", cache)
  lines = [l for l in stderr.splitlines() if "could not be read" in l]
  assert len(lines) == len(damaged), stderr[-3000:]
  assert all(l.split(": ", 1)[1].startswith("compile cache: the entry for jit_") for l in lines)
  assert "Traceback" not in stderr and "Warning" not in stderr
  assert summary["perf/compile_cache"] == "cold"
  _assert_same_run(tmp_path / "damaged", workdir)
  assert sorted(_entries(cache)) == damaged  # compiled afresh and written again
  assert all((cache / name).read_bytes() != b"garbage" for name in damaged)


@contextlib.contextmanager
def _read_only(folder):
  """`folder` unwritable, even for root (the immutable attribute; chmod does not stop root)."""
  if os.geteuid() != 0:
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
      yield
    finally:
      folder.chmod(stat.S_IRWXU)
    return
  if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
    pytest.skip("root, and no chattr +i here to make a folder read-only")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture
def restore_cache():
  """The test suite's cache (conftest) back after a test that changes it."""
  before = compile_cache.in_use()
  yield
  compile_cache.use(before)


def test_a_read_only_folder_is_a_warning_and_no_cache(tmp_path, caplog, restore_cache):
  cache = tmp_path / "cache"
  cache.mkdir()
  with _read_only(cache):
    assert compile_cache.use(str(cache)) is None
  assert compile_cache.in_use() is None
  assert [r.getMessage() for r in caplog.records] == [
      f"compile cache off: cannot write to {cache} (Operation not permitted); every program "
      "compiles afresh" if os.geteuid() == 0 else
      f"compile cache off: cannot write to {cache} (Permission denied); every program compiles "
      "afresh"]


def test_a_folder_that_cannot_be_made_is_a_warning_and_no_cache(tmp_path, caplog,
                                                                 restore_cache):
  (tmp_path / "a_file").write_text("x")
  assert compile_cache.use(str(tmp_path / "a_file" / "cache")) is None
  assert [r.getMessage() for r in caplog.records] == [
      f"compile cache off: cannot write to {tmp_path}/a_file/cache (Not a directory); every "
      "program compiles afresh"]


def test_bypassed_compiles_for_real_and_leaves_the_cache_on(tmp_path, restore_cache):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((7, 5), jnp.float32)
  compile_ = lambda: jax.jit(lambda x: jnp.tanh(x) * 3.0).lower(x).compile()  # traced anew
  compile_cache.use(str(tmp_path))
  compile_()
  tally = compile_cache.Tally.start()
  with compile_cache.bypassed():
    compile_()
  assert (tally.counts()["programs"], tally.counts()["cache_hits"]) == (1, 0)
  compile_()
  assert (tally.counts()["programs"], tally.counts()["cache_hits"]) == (2, 1)


def _tpu_lowered(topology_name):
  """A small sharded program lowered for the slice `topology_name`, and the slice's devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from research import tpu  # pylint: disable=g-import-not-at-top
  pytest.importorskip("libtpu", reason="XLA's TPU compiler: pip install -e '.[tpu-aot]'")
  devices = tpu.tpu_devices(tpu.parse_topology(topology_name))
  mesh = jax.sharding.Mesh(np.array(devices), ("d",))
  rows = NamedSharding(mesh, PartitionSpec("d"))
  step = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w.T, in_shardings=(rows, None),
                 out_shardings=rows)
  return step.lower(jax.ShapeDtypeStruct((64, 256), jnp.float32),
                    jax.ShapeDtypeStruct((256, 512), jnp.float32)), devices


def test_aot_figures_are_kept_per_program_and_slice(tmp_path, monkeypatch, restore_cache):
  """research.aot's TPU compiles (which JAX's cache cannot load back): the second analysis of
  the same program for the same slice reads the figures the first compile gave; another chip or
  slice compiles; a damaged figures file is compiled again."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import tpu  # pylint: disable=g-import-not-at-top
  compiled = []
  real_compile = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile",
                      lambda self, *a, **k: compiled.append(1) or real_compile(self, *a, **k))
  compile_cache.use(str(tmp_path))
  lowered, devices = _tpu_lowered("v5e:2x2")
  first = tpu.analyse(lowered, devices)
  assert len(compiled) == 1 and first.cost["flops"] > 0
  assert first.memory["argument"] == (64 * 256 // 4 + 256 * 512) * 4  # rows split 4 ways
  again = tpu.analyse(*_tpu_lowered("v5e:2x2"))
  assert len(compiled) == 1 and again == first and again.cached and not first.cached
  v6e, devices = _tpu_lowered("v6e:2x2")  # the same program text, another chip
  assert v6e.as_text() == lowered.as_text()
  tpu.analyse(v6e, devices)
  assert len(compiled) == 2
  tpu.analyse(*_tpu_lowered("v5e:2x4"))
  assert len(compiled) == 3
  kept = [p for p in (tmp_path / "figures").iterdir()
          if json.loads(p.read_text()) == {"memory": first.memory, "cost": first.cost}]
  assert len(kept) == 1
  kept[0].write_text("{garbage")
  assert tpu.analyse(*_tpu_lowered("v5e:2x2")) == first and len(compiled) == 4


def _fake_entries(folder, last_used):
  """Cache files '<key>-cache' of 100 bytes each, last used at `last_used[key]` (seconds ago)."""
  folder.mkdir(exist_ok=True)
  now = time.time()
  for key, ago in last_used.items():
    path = folder / f"{key}-cache"
    path.write_bytes(b"x" * 100)
    os.utime(path, (now - ago, now - ago))


def test_trim_removes_the_least_recently_used_programs_first(tmp_path):
  """Over the limit, the programs used longest ago go (a legacy '<key>-atime' file with its
  entry), until the folder fits; other files stay."""
  _fake_entries(tmp_path, {"jit_a-1": 50, "jit_b-2": 10, "jit_c-3": 40, "jit_d-4": 20})
  (tmp_path / "jit_c-3-atime").write_bytes(b"t" * 8)
  os.utime(tmp_path / "jit_c-3-atime", (time.time() - 40,) * 2)
  (tmp_path / "notes.txt").write_text("kept")
  assert compile_cache.trim(str(tmp_path), max_bytes=250) == 2
  assert sorted(os.listdir(tmp_path)) == ["jit_b-2-cache", "jit_d-4-cache", "notes.txt"]
  assert compile_cache.trim(str(tmp_path), max_bytes=250) == 0


def test_the_folder_is_trimmed_at_most_once_per_period(tmp_path):
  """`use` trims a folder when no process has within TRIM_EVERY_SECONDS (its stamp file), so the
  folder is read once an hour, not at every compile."""
  _fake_entries(tmp_path, {"jit_a-1": 30, "jit_b-2": 20, "jit_c-3": 10})
  trim = lambda: compile_cache.trim_now_and_then(str(tmp_path), max_bytes=150)
  assert trim() and _entries(tmp_path) == ["jit_c-3-cache"]
  _fake_entries(tmp_path, {"jit_a-1": 30, "jit_b-2": 20})
  assert not trim() and len(_entries(tmp_path)) == 3  # trimmed moments ago: left alone
  stamp = tmp_path / ".trimmed"
  os.utime(stamp, (time.time() - compile_cache.TRIM_EVERY_SECONDS - 1,) * 2)
  assert trim() and _entries(tmp_path) == ["jit_c-3-cache"]


def test_writing_a_program_leaves_the_rest_of_the_folder_unread(tmp_path, restore_cache):
  """jax's own eviction reads every entry of the folder (and writes '<key>-atime' files) at each
  program it caches; ours is off that path: a new entry, and no bookkeeping files."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _fake_entries(tmp_path, {f"jit_old-{i}": 10 for i in range(3)})
  compile_cache.use(str(tmp_path))
  jax.jit(lambda x: jnp.sin(x) * 7.0)(jnp.ones(3)).block_until_ready()
  names = [n for n in os.listdir(tmp_path) if not n.startswith(".")]
  assert any(n.startswith("jit__lambda") for n in names), names
  assert all(n.endswith("-cache") for n in names), names
