"""Shared fixtures: a tiny, fast version of the runlocal configs, a CLI runner, and the optional
test dependencies (torch, transformers) that CI must have."""
import importlib
import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))

# One compile cache and one data cache for the whole test run (research/compile_cache.py,
# research/data/cache.py), so that a program is compiled, and a corpus tokenized, once per run:
# in-process tests use them from here on, and every subprocess a test starts inherits the
# variables (tests/process_group.py keeps them too; pytest-xdist's workers inherit them from the
# first process). .ci/run sets them for the quick start and both suites; without them a run gets
# fresh folders, never a developer's own caches.
os.environ.setdefault("RESEARCH_COMPILE_CACHE_DIR",
                      tempfile.mkdtemp(prefix="research-test-compile-cache-"))
os.environ.setdefault("RESEARCH_DATA_CACHE_DIR", tempfile.mkdtemp(prefix="research-test-data-cache-"))
from research import compile_cache  # pylint: disable=g-import-not-at-top,wrong-import-position
compile_cache.use(os.environ["RESEARCH_COMPILE_CACHE_DIR"])


# The modules holding the longest tests, longest first (`pytest -n 2 -m slow --durations=80`,
# 2026-12-07: the runlocal jobs about 200 s each on a shared core, the tables and the chaos test
# 100-130 s, the TPU compiles 107 s). pytest-xdist hands tests to whichever worker is free in
# collection order, so a long test collected last keeps one core busy while the other idles;
# these modules go first instead. A module's tests stay together and in their order, so its
# module-scoped fixtures are built once per worker as before.
LONGEST_FIRST = (
    "tests/test_runlocal.py", "experiments/minilm_bbc_offline/test_peft_table.py",
    "experiments/minilm_bbc_offline/test_compress_table.py", "tests/test_chaos.py",
    "tests/test_aot.py", "tests/test_sharding.py", "tests/test_quantize.py",
    "tests/test_hf_peft_export.py", "tests/test_readme_commands.py", "tests/test_notebooks.py",
    "tests/test_distill.py", "tests/test_continual.py", "tests/test_multihost.py",
    "tests/test_adapter_checkpoint.py", "tests/test_bench_cpu.py",
    "experiments/continual_bbc_news/test_continual_table.py", "tests/test_generate.py")


def pytest_collection_modifyitems(items):
  rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


def tiny_config(name="mlm", steps=20, **overrides):
  """configs/<name>.py:runlocal shrunk further for tests (a few seconds of training)."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(name).get_config("runlocal")
  config.train.steps = steps
  config.train.batch_size = 16
  config.data.vocab_size = 2048
  config.data.seq_len = 64
  config.evals.update(every_steps=steps, batches=2)
  config.ckpt.every_steps = 10
  config.logging.update(every_steps=1, progress=False, tensorboard=True)
  config.schedule.warmup_steps = 5
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def run_cli(*args, env=None, timeout=600):
  """Runs `python -m research.main ARGS`; returns the CompletedProcess (text output)."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", "research.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def in_ci() -> bool:
  """CI sets CI=true (GitHub Actions, GitLab, most others)."""
  return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(name: str, reason: str):
  """Imports module `name` inside a test that needs it (torch, transformers: the `test` extra).

  Without it the test is skipped with `reason`, except in CI (CI=true): there a missing test
  dependency must not turn a parity test into a silent skip, so the test fails, naming it.
  """
  if not in_ci():
    return pytest.importorskip(name, reason=reason)
  try:
    return importlib.import_module(name)
  except ImportError as e:
    error = e
  pytest.fail(f"CI=true but {name} cannot be imported ({error}): {reason}", pytrace=False)


class _Missing:
  """Stands for a module CI lacks: a test that uses it fails, naming it."""

  def __init__(self, message):
    self._message = message

  def __getattr__(self, attr):
    if attr.startswith("_") or attr.startswith("pytest"):  # pytest's collection probing
      raise AttributeError(attr)
    pytest.fail(self._message, pytrace=False)


def require_for_module(name: str, reason: str):
  """`require` at a test module's top level: outside CI a missing module skips the module; in
  CI it returns a stand-in that fails each test using the module (the others still run)."""
  if not in_ci():
    return pytest.importorskip(name, reason=reason)
  try:
    return importlib.import_module(name)
  except ImportError as e:
    return _Missing(f"CI=true but {name} cannot be imported ({e}): {reason}")


@pytest.fixture
def tiny():
  return tiny_config


def apply_flag(config, flag: str):
  """`--config.a.b=value` on a ConfigDict in-process, the value typed as the field's (what the
  flag parser does for the shrink flags' types: bools, numbers, strings)."""
  key, value = flag[len("--config."):].split("=", 1)
  *path, leaf = key.split(".")
  node = config
  for name in path:
    node = node[name]
  old = node[leaf]
  node[leaf] = (value == "True") if isinstance(old, bool) else type(old)(value)


def wandb_offline_env(root: str) -> dict:
  """Weights & Biases offline and silent, every file it writes under `root`: no test that turns
  `config.logging.wandb` on reaches the network or the user's home."""
  return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": root,
          **{f"WANDB_{kind}_DIR": os.path.join(root, kind.lower())
             for kind in ("CONFIG", "CACHE", "DATA", "ARTIFACT")}}


# Two tiny fine-tuning runs that differ only in their learning rate, logged to W&B offline: what
# `python -m research.report` compares (tests/test_report.py) and what W&B must hold
# (tests/test_wandb_logging.py). Seconds each: 3 steps of 8 x 32 tokens, one layer.
LEARNING_RATES = (1e-3, 3e-3)
TINY_FINETUNE = ["--config=configs/finetune.py:task=bbc_news,runlocal", "--config.train.steps=3",
                 "--config.train.batch_size=8", "--config.data.seq_len=32",
                 "--config.data.vocab_size=512", "--config.model.num_layers=1",
                 "--config.evals.every_steps=1", "--config.ckpt.every_steps=3",
                 "--config.logging.every_steps=1", "--config.logging.progress=False",
                 "--config.logging.tensorboard=False"]


@pytest.fixture(scope="session")
def finetune_lr_pair(tmp_path_factory):
  """(the two workdirs, the W&B environment they ran with); slow tests only (~40 s)."""
  require("wandb", "the runs log to Weights & Biases (offline): pip install -e '.[test]'")
  root = tmp_path_factory.mktemp("lr_pair")
  env = wandb_offline_env(str(root / "wandb_home"))
  workdirs = []
  for lr in LEARNING_RATES:
    workdir = str(root / f"lr{lr:g}")
    proc = run_cli(*TINY_FINETUNE, f"--workdir={workdir}", f"--config.optim.learning_rate={lr}",
                   "--config.logging.wandb.mode=offline", "--config.logging.wandb.project=p",
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workdirs.append(workdir)
  return workdirs, env
