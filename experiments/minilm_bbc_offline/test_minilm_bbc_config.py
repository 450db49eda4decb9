"""configs/minilm_bbc.py: the old tables' commands exactly, every PEFT method, one-line errors."""
import importlib.util
import os
import subprocess
import sys

import pytest

from research import config_lib
from research.peft.config import METHODS, PeftConfig

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CONFIG = "experiments/minilm_bbc_offline/configs/minilm_bbc.py"


def _recipe(arg):
  spec = importlib.util.spec_from_file_location("minilm_bbc", os.path.join(REPO, CONFIG))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _old_command(arg, **overrides):
  """configs/finetune.py:ARG with the flags the tables' commands gave before this config."""
  config = config_lib.load_config_file("finetune", arg)
  config.init.weights = "hf:sentence-transformers/all-MiniLM-L6-v2"
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.mark.parametrize("arg, old_arg, overrides", [
    ("", "task=bbc_news,runlocal", dict(optim__learning_rate=1e-4)),  # full fine-tuning
    ("peft=adalora", "task=bbc_news,runlocal,peft=adalora", {}),
    ("steps=150", "task=bbc_news,runlocal",  # the compression table's teacher
     dict(optim__learning_rate=1e-4, train__steps=150, evals__every_steps=50)),
])
def test_the_recipe_is_the_old_tables_command(arg, old_arg, overrides):
  assert _recipe(arg).to_dict() == _old_command(old_arg, **overrides).to_dict()


@pytest.mark.parametrize("method", METHODS)
def test_every_peft_method_with_its_learning_rate(method):
  config = _recipe(f"peft={method},steps=150")
  assert config.peft.method == method
  assert config.optim.learning_rate == (1e-4 if method == "none" else
                                        PeftConfig(method=method).learning_rate)
  assert config.init.weights == "hf:sentence-transformers/all-MiniLM-L6-v2"
  assert (config.train.steps, config.evals.every_steps, config.model.dtype) == (150, 50, "float32")
  if method == "adalora":  # the budget schedule follows `steps`
    assert (config.peft.adalora_warmup, config.peft.adalora_final) == (15, 60)


@pytest.mark.parametrize("arg, message", [
    ("peft=loar", "error: peft.method must be one of ['none', 'lora', 'adalora', 'adapter', "
                  "'prefix', 'prompt', 'bitfit', 'ia3'], got 'loar'"),
    ("steps=0", "error: config argument steps must be >= 1, got 0"),
])
def test_a_bad_argument_fails_in_one_line_before_writing(tmp_path, arg, message):
  proc = subprocess.run([sys.executable, "-m", "research.main", f"--config={CONFIG}:{arg}",
                         f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [message]
  assert not (tmp_path / "w").exists()
