"""Config value checks that need no data and no devices: run first, before anything is read."""
import re

from research.errors import UserError


def check_config(config):
  kind = config.model.kind
  objective = config.objective.name if config.get("objective") else None
  wanted = {"mlm": "encoder", "clm": "decoder"}.get(objective)
  if wanted and kind != wanted:
    raise UserError(f"objective {objective!r} trains a {wanted}, but model.kind is {kind!r}")
  for key in ("train.steps", "train.batch_size", "train.grad_accum_steps", "data.seq_len",
              "logging.every_steps", "evals.every_steps", "ckpt.every_steps", "ckpt.keep"):
    section, field = key.split(".")
    if config[section][field] < 1:
      raise UserError(f"{key} must be >= 1, got {config[section][field]}")
  if config.data.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len ({config.data.seq_len}) exceeds model.max_len "
                    f"({config.model.max_len})")
  for pattern in list(config.optim.no_decay) + list(config.init.exclude):
    try:
      re.compile(pattern)
    except re.error as e:
      raise UserError(f"bad regex {pattern!r} in config: {e}") from None
