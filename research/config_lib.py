"""Helpers for `configs/*.py`: argument parsing and the config sections every recipe shares.

A config file's `get_config(arg)` receives the text after ':' in `--config=configs/x.py:arg`,
e.g. 'size=tiny,runlocal'; `parse_arg` turns it into typed fields (bare names are booleans).
"""
import dataclasses
import importlib.util
import math
import os

import ml_collections

from research import compile_cache, features, wandb_logging
from research.data import cache as data_cache
from research.errors import UserError
from research.data.labelled import TRAIN_ROWS
from research.models.config import SIZES, ModelConfig
from research.peft.config import PeftConfig
from research.sharding import DEFAULT_RULES


# The spellings a bool argument accepts (any case); a bare name is true. Anything else is refused:
# a lenient parse read 'runlocal=maybe' as false and started a full-size run.
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """'size=tiny,runlocal' -> ConfigDict(size='tiny', runlocal=True), typed like `defaults`.

  Strict, since a typo must not silently change the run: an unknown name, a bool that is not
  one of `TRUE_WORDS`/`FALSE_WORDS`, a number that does not parse, or a bare name that is not a
  bool each raise `UserError` naming the argument and what it accepts.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise UserError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = parse_bool(key, value) if eq else True
    elif not eq:
      raise UserError(f"config argument {key!r} needs a value: {key}=...")
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise UserError(f"config argument {key}={value!r} is not a {kind.__name__}") from None
  return out


def parse_bool(key: str, value: str) -> bool:
  word = value.strip().lower()
  if word in TRUE_WORDS + FALSE_WORDS:
    return word in TRUE_WORDS
  raise UserError(f"config argument {key}={value!r} is not a bool: use "
                  f"{', '.join(TRUE_WORDS + FALSE_WORDS)} (any case), or {key} alone for true")


def load_config_file(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the repository's configs/<name>.py (what `--config=configs/<name>.py:arg`
  loads), or of a file the repository holds when `name` ends in .py (e.g.
  'experiments/minilm_bbc_offline/configs/minilm_bbc.py'), for code that builds a run's config
  without the command line (the benchmarks)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, name) if name.endswith(".py") else os.path.join(root, "configs",
                                                                            f"{name}.py")
  module_name = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "_")
  spec = importlib.util.spec_from_file_location(f"configs_{module_name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def epoch_steps(task: str, batch_size: int) -> int:
  """Steps in one pass over hub task `task`'s train split at `batch_size`, the last batch counted
  (as transformers' Trainer counts an epoch): for recipes that give epochs. SQuAD's count is of
  questions; a question whose context spans several windows adds steps the count misses (~1%)."""
  if task not in TRAIN_ROWS:
    raise UserError(f"no train-split size for task {task!r}; known: {sorted(TRAIN_ROWS)}")
  return math.ceil(TRAIN_ROWS[task] / batch_size)


def model(kind: str, size: str, *, dtype: str = "bfloat16"):
  """The `model` section: a named size of the BERT encoder or GPT-2 decoder.

  Holds every `ModelConfig` field, so each can be overridden from the command line. `heads` is
  left empty: the run derives it from the objective or the tasks.
  """
  if size not in SIZES:
    raise UserError(f"unknown size {size!r}; known: {list(SIZES)}")
  layers, hidden, num_heads = SIZES[size]
  encoder = kind == "encoder"
  fields = dataclasses.asdict(ModelConfig())
  del fields["peft"]  # its own section, `config.peft`
  fields.update(
      kind=kind, vocab_size=-1, hidden_size=hidden, num_layers=layers, num_heads=num_heads,
      mlp_dim=4 * hidden, max_len=512 if encoder else 1024, type_vocab_size=2 if encoder else 0,
      dropout_rate=0.1, layer_norm_eps=1e-12 if encoder else 1e-5,
      activation="gelu" if encoder else "gelu_tanh", dtype=dtype, param_dtype="float32",
      heads=(), pooler=encoder, attention_impl=ml_collections.FieldReference(None, str))
  return ml_collections.ConfigDict(fields)


def optim(learning_rate: float, weight_decay: float = 0.01):
  return ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=learning_rate, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=weight_decay, clip_norm=1.0,
      # Parameters matching any of these path regexes get no weight decay.
      no_decay=(r"bias$", r"(^|/)ln[^/]*/scale$", r"embed/embedding$"),
      # Only parameters matching one of these path regexes are trained (empty: all); the rest
      # get no updates and no optimizer state.
      trainable=()))


def train(steps: int, batch_size: int):
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, grad_accum_steps=1, seed=0,
      # Dropout's random bits: 'threefry' (the same bits on any mesh) or 'rbg' (XLA's
      # RngBitGenerator: cheaper on GPUs and TPUs, but the bits depend on the sharding).
      dropout_prng="threefry",
      # A step whose loss or gradients are not finite: 'stop' the run there (exit code 4, no
      # save), or 'skip' its update and stop after `max_consecutive_skips` such steps in a row.
      nonfinite="stop", max_consecutive_skips=5))


def common(config):
  """Adds the sections every recipe shares (mesh, sharding rules, checkpoints, init, logging,
  the compile and data caches, and each registered training feature's, research/features.py)."""
  config.mesh = dict(data=-1, fsdp=1, tensor=1)
  config.sharding_rules = DEFAULT_RULES
  config.ckpt = dict(every_steps=1000, keep=3, use_async=True)
  config.init = {"resume": "", "weights": "", "exclude": ()}
  config.logging = dict(every_steps=50, peak_tflops=0.0, tensorboard=True, progress=True,
                        wandb=wandb_logging.section())  # Weights & Biases: research/wandb_logging.py
  for feature in features.REGISTRY:  # peft, prune, distill, ema: each off by default
    if feature.section() is not None:
      config[feature.name] = feature.section()
  config.compile = compile_cache.section()  # compiled programs kept: research/compile_cache.py
  config.data_cache = data_cache.section()  # tokenizers and token ids kept: research/data/cache.py
  return config


def use_peft(config, method: str):
  """A recipe's `peft=METHOD` argument: `config.peft.method` and the method's usual learning rate
  (adapting a few parameters takes larger steps than full fine-tuning), and for AdaLoRA its
  budget schedule from `train.steps` (pruning from 10% of the steps, the final ranks fixed for
  the last 40%, a cut every 10 steps); 'none' changes nothing."""
  if method == "none":
    return
  peft = PeftConfig(method=method)
  peft.validate()
  config.peft.method = method
  config.optim.learning_rate = peft.learning_rate
  if method == "adalora":  # the rank budget's schedule, from the recipe's steps
    steps = config.train.steps
    config.peft.update(adalora_warmup=steps // 10, adalora_final=4 * steps // 10,
                       adalora_interval=10)
