"""Optimizer and learning-rate schedule from `config.optim` and `config.schedule`.

AdamW with weight decay masked off by parameter-path patterns (regexes searched in the
'/'-joined path, e.g. 'backbone/layer_0/ln_mlp/scale'), so the mask does not depend on one
library's naming; global-norm clipping; linear warmup then linear or cosine decay. Only the
parameters `optim.trainable` and the run's training features select are trained (PEFT's
adapters): the rest get zero updates and no optimizer state. The features may wrap the
optimizer of the trained parameters (`Feature.optimizer`: AdaLoRA's rank budget, pruning).
"""
import jax
import optax

from research import params as params_lib
from research.errors import UserError
from research.train import feature as feature_lib


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


def trainable_patterns(config, features) -> tuple:
  """The regexes of the trained parameters: `optim.trainable`'s and the `features`' (PEFT's
  adapters); empty: every parameter is trained."""
  return feature_lib.trainable_patterns(config, features)


def trainable_predicate(config, features):
  """path -> bool: whether the parameter at `path` is trained (`trainable_patterns`)."""
  patterns = trainable_patterns(config, features)
  return params_lib.matches(patterns) if patterns else (lambda path: True)


def build(config, features) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ clipping) on the trainable parameters; frozen ones get zero updates and no state.

  Clipping measures the trainable parameters' gradients only. Each of the run's `features`
  (research.train.feature; () for none) may wrap the trainable parameters' optimizer, in the
  registry's order (`Feature.optimizer`).
  """
  o = config.optim
  if o.name != "adamw":
    raise UserError(f"optim.name must be 'adamw', got {o.name!r}")
  lr = schedule(config)
  chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  chain.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=decay_mask(o.no_decay)))
  tx = feature_lib.wrap_optimizer(optax.chain(*chain), features)
  if not trainable_patterns(config, features):
    return tx, lr
  trainable = trainable_predicate(config, features)
  labels = lambda params: jax.tree.map(lambda t: "trainable" if t else "frozen",
                                       params_lib.mask(params, trainable))
  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels), lr
