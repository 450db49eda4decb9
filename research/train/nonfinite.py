"""Non-finite losses and gradients: the `train.nonfinite` policy, 'stop' (default) or 'skip'.

Inside the jitted step (research/train/step.py) an update whose loss or gradients are not finite
is dropped (a branch: parameters and optimizer state stay as they were) and counted in `Health`,
which the train state carries: no host sync. The host reads `Health` where it syncs anyway, when
it fetches a step's metrics (every `logging.every_steps`) and before every checkpoint save. Once a
run of consecutive non-finite steps reaches `limit` (1 for 'stop', `train.max_consecutive_skips`
for 'skip') `Health` stops changing (`reached`) and the run stops with `divergence`: `Diverged`,
naming that run's first step and the first value that was not finite there. So no checkpoint is
written after a divergence, and one with skipped updates holds the last finite step's parameters.
"""
import flax
import jax
import jax.numpy as jnp

from research import params as params_lib
from research.errors import Diverged

POLICIES = ("stop", "skip")


@flax.struct.dataclass
class Health:
  skipped: jax.Array      # int32: updates dropped so far
  consecutive: jax.Array  # int32: non-finite steps in a row, up to the latest
  first_step: jax.Array   # int32: the first step of that run (numbered from 1, as metrics are)
  first_what: jax.Array   # int32: index into `quantities(params)` of its first non-finite value

  @classmethod
  def fresh(cls):
    zero, none = jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32)
    return cls(skipped=zero, consecutive=zero, first_step=none, first_what=none)


def limit(train_config) -> int:
  """Consecutive non-finite steps that stop the run."""
  return 1 if train_config.nonfinite == "stop" else train_config.max_consecutive_skips


def quantities(params) -> list[str]:
  """What `grad_norm_and_first_nonfinite` checks, in order: the loss, each parameter's gradient,
  the gradients' global norm."""
  return (["train/loss"] + [f"the gradient of {p}" for p in params_lib.flatten(params)] +
          ["train/grad_norm"])


def grad_norm_and_first_nonfinite(loss, grads):
  """(the gradients' global norm, as `optax.global_norm`; the index into `quantities` of the first
  non-finite value, or -1). A gradient is checked through its own sum of squares, the norm's
  terms, so the check adds no pass over the gradients."""
  squares = [jnp.sum(jnp.square(g)) for g in params_lib.flatten(grads).values()]
  grad_norm = jnp.sqrt(sum(squares))
  finite = jnp.stack([jnp.isfinite(x) for x in [loss, *squares, grad_norm]])
  what = jnp.where(jnp.all(finite), -1, jnp.argmin(finite.astype(jnp.int32)))
  return grad_norm, what.astype(jnp.int32)


def update(health: Health, what, step, stop_limit: int) -> Health:
  """`health` after step `step` (0-based) whose first non-finite value is `what` (-1: none)."""
  bad = what >= 0
  starts_run = bad & (health.consecutive == 0)
  new = Health(skipped=health.skipped + bad.astype(jnp.int32),
               consecutive=jnp.where(bad, health.consecutive + 1, 0),
               first_step=jnp.where(starts_run, step + 1, jnp.where(bad, health.first_step, -1)),
               first_what=jnp.where(starts_run, what, jnp.where(bad, health.first_what, -1)))
  reached = health.consecutive >= stop_limit  # latched: the host is to see that run
  return jax.tree.map(lambda old, n: jnp.where(reached, old, n), health, new)


def reached(health: Health, train_config) -> bool:
  """Whether `health` (host values) holds a run of non-finite steps that stops training."""
  return int(health.consecutive) >= limit(train_config)


def divergence(health: Health, params, train_config, latest_checkpoint) -> Diverged:
  """The error to stop with once `reached`; `params` names the gradient or parameter."""
  stop_limit = limit(train_config)
  step, what = int(health.first_step), quantities(params)[int(health.first_what)]
  if train_config.nonfinite == "stop":
    why = "(train.nonfinite=stop)"
  else:
    why = (f"after {stop_limit} consecutive skipped updates "
           f"(train.max_consecutive_skips={stop_limit})")
  kept = ("no checkpoint was written yet" if latest_checkpoint is None
          else f"the latest checkpoint, step {latest_checkpoint}, is intact")
  return Diverged(f"diverged at step {step}: {what} is not finite; stopped {why} without saving; "
                  f"{kept}", step)
