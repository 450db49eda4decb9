"""`validation.check_config`: every check of its table refuses NaN and infinities (the table is
read, so a check added later is covered), and so does every other number of a config and every
numeric check outside the table; the bounds added for issue 27 (sequence length, steps, model
size). The command line's view of these: tests/test_cli_errors.py."""
import math

import pytest

from research import config_lib, validation
from research.compress import distill
from research.continual.settings import ContinualConfig
from research.errors import UserError
from research.tasks import mixture

CONFIGS = [("mlm", "runlocal"), ("finetune", "runlocal"), ("continual", "runlocal,method=ewc")]
BAD_NUMBERS = [math.nan, math.inf, -math.inf]


def config_with(key):
  """A fresh config that has `key` (the first of `CONFIGS`), or None."""
  for name, arg in CONFIGS:
    config = config_lib.load_config_file(name, arg)
    if validation._lookup(config, key) is not validation._MISSING:  # pylint: disable=protected-access
      return config
  return None


def _set(config, key, value):
  *sections, field = key.split(".")
  for section in sections:
    config = config[section]
  config[field] = value


def test_the_configs_pass():
  for name, arg in CONFIGS:
    validation.check_config(config_lib.load_config_file(name, arg))


@pytest.mark.parametrize("key, allowed", [(k, a) for k, a, _ in validation.RULES])
def test_every_numeric_check_of_the_table_refuses_nan_and_inf(key, allowed):
  config = config_with(key)
  assert config is not None, f"no config of {CONFIGS} has {key}: add one that does"
  value = validation._lookup(config, key)  # pylint: disable=protected-access
  if isinstance(value, str):
    return  # a choice among names
  if isinstance(value, int):  # NaN cannot be an int: the flag parser refuses 'nan' for it
    with pytest.raises(TypeError):
      _set(config, key, math.nan)
    return
  for bad in BAD_NUMBERS:
    _set(config, key, bad)
    with pytest.raises(UserError) as e:
      validation.check_config(config)
    assert str(e.value) == f"{key} must be {allowed}, got {bad!r}"


@pytest.mark.parametrize("name, arg", CONFIGS)
def test_every_float_of_a_config_refuses_nan_and_inf(name, arg):
  """Numbers outside the table too (continual.ewc.strength=nan passed `strength <= 0`)."""
  floats = [k for k, v in flat(config_lib.load_config_file(name, arg)).items()
            if isinstance(v, float)]
  assert "optim.learning_rate" in floats
  for key in floats:
    for bad in BAD_NUMBERS:
      config = config_lib.load_config_file(name, arg)
      _set(config, key, bad)
      with pytest.raises(UserError) as e:
        validation.check_config(config)
      assert str(e.value).startswith(f"{key} must be "), str(e.value)
      assert str(e.value).endswith(f", got {bad!r}"), str(e.value)


def flat(config, prefix=""):
  out = {}
  for k, v in config.items():
    if hasattr(v, "items"):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def test_numeric_checks_outside_the_table_refuse_nan_and_inf():
  for bad in BAD_NUMBERS:
    config = config_lib.load_config_file("continual", "runlocal,method=ewc")
    config.continual.ewc.strength = bad
    with pytest.raises(UserError, match="needs a finite continual.ewc.strength > 0"):
      ContinualConfig.of_run(config)
    with pytest.raises(UserError, match=f"distill.temperature must be finite and > 0, got {bad}"):
      distill.DistillConfig(temperature=bad).validate()
    with pytest.raises(UserError, match="distill.soft_weight must be finite and >= 0"):
      distill.DistillConfig(soft_weight=bad).validate()
    with pytest.raises(UserError, match=f"mixture.temperature must be finite and > 0, got {bad}"):
      mixture.weights([3, 1], "temperature", bad)


@pytest.mark.parametrize("name, arg, overrides, line", [
    ("mlm", "runlocal", {"data.seq_len": 2},
     "data.seq_len must be >= 3 for model.kind='encoder' (a row holds [CLS] a [SEP]), got 2"),
    ("mlm", "runlocal,sentence_task=nsp", {"data.seq_len": 3},
     "data.seq_len must be >= 4 for model.kind='encoder' (a row holds [CLS] a [SEP] b [SEP]), "
     "got 3"),
    ("clm", "runlocal", {"data.seq_len": 1},
     "data.seq_len must be >= 2 for model.kind='decoder' (a row holds a token and the next), "
     "got 1"),
    ("mlm", "runlocal", {"train.steps": 2**31},
     "train.steps must be <= 2147483647 (the step counter is int32), got 2147483648"),
    ("mlm", "runlocal", {"model.num_layers": 0}, "model.num_layers must be >= 1, got 0"),
    ("mlm", "runlocal", {"model.num_heads": 0}, "model.num_heads must be >= 1, got 0"),
    ("mlm", "runlocal", {"model.hidden_size": 0}, "model.hidden_size must be >= 1, got 0"),
])
def test_shapes_that_fail_late_or_train_on_nothing_are_refused(name, arg, overrides, line):
  config = config_lib.load_config_file(name, arg)
  for key, value in overrides.items():
    _set(config, key, value)
  with pytest.raises(UserError) as e:
    validation.check_config(config)
  assert str(e.value) == line


def test_the_shortest_rows_pass():
  for name, arg, seq_len in [("mlm", "runlocal", 3), ("mlm", "runlocal,sentence_task=sop", 4),
                             ("clm", "runlocal", 2)]:
    config = config_lib.load_config_file(name, arg)
    config.data.seq_len = seq_len
    config.train.steps = 2**31 - 1
    validation.check_config(config)
