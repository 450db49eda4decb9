"""Shared fixtures: a tiny, fast version of the runlocal configs, and a CLI runner."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))


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


@pytest.fixture
def tiny():
  return tiny_config
