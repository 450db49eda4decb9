"""`check_config(config)`: the config's values, checked before anything is read or written.

One table of (key, what is allowed, test); a key the config does not have is skipped (a
fine-tuning config has no `objective`, a pretraining one no `tasks`). Checks that relate several
keys follow the table. Every failure is a `UserError` naming the key, the value and what is
allowed.
"""
import re

from research import wandb_logging
from research.errors import UserError
from research.tasks import finetuning
from research.train.nonfinite import POLICIES
from research.train.optim import DECAYS

_AT_LEAST_ONE = ("train.steps", "train.batch_size", "train.grad_accum_steps",
                 "train.max_consecutive_skips", "data.seq_len",
                 "logging.every_steps", "evals.every_steps", "ckpt.every_steps", "ckpt.keep")

RULES = [(key, ">= 1", lambda v: v >= 1) for key in _AT_LEAST_ONE] + [
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


def check_config(config):
  for key, allowed, ok in RULES:
    value = _lookup(config, key)
    if value is not _MISSING and not ok(value):
      raise UserError(f"{key} must be {allowed}, got {value!r}")
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
