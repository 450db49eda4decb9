"""`check_config(config)`: the config's values, checked before anything is read or written.

One table of (key, what is allowed, test); a key the config does not have is skipped (a
fine-tuning config has no `objective`, a pretraining one no `tasks`). Checks that relate several
keys follow the table. Every failure is a `UserError` naming the key, the value and what is
allowed. No number may be NaN or infinite, in the table or anywhere else in the config (a NaN
passes any `x <= 0` refusal, an inf any lower bound): `check_finite`.
"""
import math
import re

import ml_collections

from research import wandb_logging
from research.errors import UserError
from research.tasks import finetuning
from research.train.nonfinite import POLICIES
from research.train.optim import DECAYS

_AT_LEAST_ONE = ("train.steps", "train.batch_size", "train.grad_accum_steps",
                 "train.max_consecutive_skips", "data.seq_len",
                 "logging.every_steps", "evals.every_steps", "ckpt.every_steps", "ckpt.keep")

# The train state counts steps in int32: more than this overflows (a traceback, after writing).
MAX_STEPS = 2**31 - 1

RULES = [(key, ">= 1", lambda v: v >= 1) for key in _AT_LEAST_ONE] + [
    ("train.steps", f"<= {MAX_STEPS} (the step counter is int32)", lambda v: v <= MAX_STEPS),
    ("schedule.warmup_steps", f"<= {MAX_STEPS} (the step counter is int32)",
     lambda v: v <= MAX_STEPS),
    ("model.num_layers", ">= 1", lambda v: v >= 1),
    ("model.num_heads", ">= 1", lambda v: v >= 1),
    ("model.hidden_size", ">= 1", lambda v: v >= 1),
    ("objective.mask_rate", "in (0, 1]", lambda v: 0 < v <= 1),
    ("model.dropout_rate", "in [0, 1)", lambda v: 0 <= v < 1),
    ("optim.learning_rate", ">= 0", lambda v: v >= 0),
    ("optim.weight_decay", ">= 0", lambda v: v >= 0),
    ("optim.clip_norm", ">= 0 (0 = off)", lambda v: v >= 0),
    ("optim.b1", "in [0, 1)", lambda v: 0 <= v < 1),
    ("optim.b2", "in [0, 1)", lambda v: 0 <= v < 1),
    ("optim.eps", "> 0", lambda v: v > 0),
    ("schedule.warmup_steps", ">= 0", lambda v: v >= 0),
    ("schedule.end_factor", ">= 0", lambda v: v >= 0),
    ("schedule.decay", f"one of {', '.join(DECAYS)}", lambda v: v in DECAYS),
    ("train.nonfinite", f"one of {', '.join(POLICIES)}", lambda v: v in POLICIES),
    ("data.eval_fraction", "in (0, 1)", lambda v: 0 < v < 1),
    ("evals.batches", ">= 0 (0 = one pass)", lambda v: v >= 0),
    ("logging.wandb.mode", f"one of {', '.join(wandb_logging.MODES)}",
     lambda v: v in wandb_logging.MODES),
]


_MISSING = object()


def _lookup(config, key):
  """The value at 'section.field' (or 'section.subsection.field'), or `_MISSING`."""
  value = config
  for part in key.split("."):
    if not value or part not in value:
      return _MISSING
    value = value[part]
  return value


def _finite(value) -> bool:
  return not isinstance(value, float) or math.isfinite(value)


def check_config(config):
  for key, allowed, ok in RULES:
    value = _lookup(config, key)
    if value is not _MISSING and not (_finite(value) and ok(value)):
      raise UserError(f"{key} must be {allowed}, got {value!r}")
  check_finite(config)
  mode = _lookup(config, "logging.wandb.mode")
  if mode not in (_MISSING, "disabled") and not wandb_logging.installed():
    raise UserError(f"logging.wandb.mode={mode!r} needs the wandb package: pip install wandb "
                    "(or pip install -e \".[wandb]\")")
  kind = config.model.kind
  objective = config.objective.name if config.get("objective") else None
  wanted = {"mlm": "encoder", "clm": "decoder"}.get(objective)
  if wanted and kind != wanted:
    raise UserError(f"objective {objective!r} trains a {wanted}, but model.kind is {kind!r}")
  if config.data.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len ({config.data.seq_len}) exceeds model.max_len "
                    f"({config.model.max_len})")
  check_min_seq_len(config)
  if config.get("tasks"):
    wanted = finetuning.model_kind(config)
    if kind != wanted:
      raise UserError(f"{'generation' if wanted == 'decoder' else 'fine-tuning'} tasks need "
                      f"a{'n' if wanted == 'encoder' else ''} {wanted}, but model.kind is {kind!r}")
  for pattern in (list(config.optim.no_decay) + list(config.optim.get("trainable", ())) +
                  list(config.init.exclude)):
    try:
      re.compile(pattern)
    except re.error as e:
      raise UserError(f"bad regex {pattern!r} in config: {e}") from None


def check_finite(config, prefix: str = ""):
  """Every float of the config, at any depth, is finite (the table checks its own keys first,
  with their ranges in the message)."""
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      check_finite(value, f"{prefix}{key}.")
    elif not _finite(value):
      raise UserError(f"{prefix}{key} must be a finite number, got {value!r}")


def check_min_seq_len(config):
  """A row holds its special tokens and at least one token of text: an encoder's [CLS] x [SEP]
  ([CLS] a [SEP] b [SEP] with a sentence task), a decoder's input and next token. Shorter rows
  fail deep in the data pipeline, or train on nothing (a CLM loss of 0)."""
  pair = bool(config.get("objective")) and config.objective.get("sentence_task", "none") != "none"
  shortest, row = {"encoder": (4, "[CLS] a [SEP] b [SEP]") if pair else (3, "[CLS] a [SEP]"),
                   "decoder": (2, "a token and the next")}.get(config.model.kind, (1, "a token"))
  if config.data.seq_len < shortest:
    raise UserError(f"data.seq_len must be >= {shortest} for model.kind={config.model.kind!r} "
                    f"(a row holds {row}), got {config.data.seq_len}")
