"""Optimizer and learning-rate schedule from `config.optim` and `config.schedule`.

AdamW with weight decay masked off by parameter-path patterns (regexes searched in the
'/'-joined path, e.g. 'backbone/layer_0/ln_mlp/scale'), so the mask does not depend on one
library's naming; global-norm clipping; linear warmup then linear or cosine decay. Only the
parameters `optim.trainable` selects are trained (the seam PEFT uses): the rest get zero updates
and no optimizer state.
"""
import jax
import optax

from research import params as params_lib
from research.compress import magnitude
from research.errors import UserError
from research.peft import adalora
from research.peft.config import PeftConfig


DECAYS = ("linear", "cosine", "constant")  # schedule.decay: what follows the warmup


def schedule(config) -> optax.Schedule:
  s, peak, steps = config.schedule, config.optim.learning_rate, config.train.steps
  warmup = min(s.warmup_steps, steps)
  decay_steps = max(steps - warmup, 1)
  end = peak * s.end_factor
  if s.decay == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif s.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=s.end_factor)
  elif s.decay == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise UserError(f"schedule.decay must be 'linear', 'cosine' or 'constant', got {s.decay!r}")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(patterns):
  """A mask function: True (decay) unless a pattern matches the parameter's path."""
  exempt = params_lib.matches(patterns)
  return lambda params: params_lib.mask(params, lambda path: not exempt(path))


def trainable_patterns(config) -> tuple:
  """The regexes of the trained parameters: `optim.trainable`'s and those of the `peft` method
  (research/peft); empty: every parameter is trained."""
  return (tuple(config.optim.get("trainable", ())) +
          PeftConfig.from_dict(config.get("peft")).trainable_patterns)


def trainable_predicate(config):
  """path -> bool: whether the parameter at `path` is trained (`trainable_patterns`)."""
  patterns = trainable_patterns(config)
  return params_lib.matches(patterns) if patterns else (lambda path: True)


def build(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ clipping) on the trainable parameters; frozen ones get zero updates and no state.

  Clipping measures the trainable parameters' gradients only. With `peft.method=adalora` the
  trainable parameters' optimizer also prunes singular values to the rank budget
  (`adalora.rank_allocation`, over `train.steps`). With `prune.sparsity` > 0 the whole optimizer
  also keeps the targeted weights pruned (`magnitude.pruning`; not with PEFT: resolve refuses).
  """
  o = config.optim
  if o.name != "adamw":
    raise UserError(f"optim.name must be 'adamw', got {o.name!r}")
  lr = schedule(config)
  chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  chain.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=decay_mask(o.no_decay)))
  tx = optax.chain(*chain)
  peft = PeftConfig.from_dict(config.get("peft"))
  if peft.method == "adalora":
    tx = adalora.rank_allocation(tx, peft, config.train.steps)
  prune = magnitude.PruneConfig.from_dict(config.get("prune"))
  if prune.active:
    tx = magnitude.pruning(tx, prune)
  if not trainable_patterns(config):
    return tx, lr
  trainable = trainable_predicate(config)
  labels = lambda params: jax.tree.map(lambda t: "trainable" if t else "frozen",
                                       params_lib.mask(params, trainable))
  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels), lr
