"""The train state and the jitted train and eval steps.

`train_step(state, batch) -> (state, metrics)`: dropout randomness is `fold_in(key, step)`, so a
step's result depends only on (state, batch); gradients can be accumulated over microbatches
with `lax.scan`. The loss is a task's objectives (`research.objectives`), divided once by the
global batch's counts, so accumulation gives exactly the full-batch loss and gradients.
An update whose loss or gradients are not finite is dropped and counted in `state.health`
(research/train/nonfinite.py). `eval_step(params, batch)` returns the task's
`eval_outputs(outputs, batch)`. Both stay on device: nothing here forces a host sync.

Training features (research/train/feature.py) reach the step through its hooks only: the
step is `train_step(state, batch, inputs)`, `inputs` holding each feature's `step_inputs` under
its name (a distillation teacher's parameters, a continual penalty's anchor): arguments of the
step, never differentiated, never checkpointed, never compiled in as constants. A feature's
`prepare_batch` runs first (a teacher's outputs, under `stop_gradient`, join the batch), its
`objectives` replace the task's, its `sown` collections are sown, and its `regularizers` add
loss terms of the parameters.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from research import objectives as objectives_lib
from research import params as params_lib
from research.errors import UserError
from research.models import layers
from research.train import nonfinite


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  health: nonfinite.Health  # non-finite steps: counted, their updates dropped

  @classmethod
  def create(cls, params, opt_state):
    """The state at step 0."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
               health=nonfinite.Health.fresh())


def model_inputs(batch) -> dict:
  """The keyword arguments of `Transformer.__call__` that a batch provides."""
  keys = ("attention_mask", "token_type_ids", "segment_ids", "masked_positions")
  return {k: batch[k] for k in keys if k in batch}


def apply_model(model, params, batch, rng=None, sown=()):
  """The model's outputs; plus, for each collection name in `sown` (`layers.BLOCK_OUTPUTS`,
  `layers.ATTENTION`), what every block sowed there, (batch, num_layers, ...), under that name."""
  apply = lambda **kw: model.apply(
      {"params": params}, batch["input_ids"], **model_inputs(batch), deterministic=rng is None,
      rngs=None if rng is None else {"dropout": rng}, **kw)
  if not sown:
    return apply()
  outputs, collections = apply(mutable=list(sown))
  return {**outputs, **{name: layers.per_block(collections[name]) for name in sown}}


def make_loss_fn(model, objectives, sown=()):
  def loss_fn(params, batch, rng, global_counts):
    outputs = apply_model(model, params, batch, rng, sown)
    return objectives_lib.loss_and_sums(objectives, outputs, batch, global_counts)
  return loss_fn


def _microbatches(batch, n):
  """(B, ...) -> (n, B / n, ...), microbatch i holding rows i, i + n, ... (balanced shards)."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


DROPOUT_PRNGS = ("rbg", "threefry")


def derive_dropout_key(key, prng: str):
  """`key` for threefry; for 'rbg' an RngBitGenerator key derived from it (see config.train)."""
  if prng not in DROPOUT_PRNGS:
    raise UserError(f"train.dropout_prng must be one of {list(DROPOUT_PRNGS)}, got {prng!r}")
  if prng == "threefry":
    return key
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def make_train_step(model, objectives, tx, lr_schedule, dropout_key, grad_accum_steps=1,
                    nonfinite_limit=1, trainable=None, features=()):
  """The train step of `objectives` (a task's loss terms, see research.objectives.base).

  Every objective's count is taken over the whole batch first; each microbatch's loss is its sum
  divided by those global counts, so the accumulated loss and gradients are the full batch's.
  `nonfinite_limit`: consecutive non-finite steps after which `state.health` stops changing, for
  the host to stop the run (`nonfinite.limit`). `trainable` (path -> bool; None: all) picks the
  parameters that are differentiated: frozen ones (PEFT) get no gradient computed, only zeros
  that `tx` (which freezes them) discards. `features`: the run's training features, whose step
  hooks the step calls (see the module docstring).
  """
  for feature in features:
    objectives = feature.objectives(objectives)
  loss_fn = make_loss_fn(model, objectives, tuple(s for f in features for s in f.sown))
  # Differentiated with respect to the trainable parameters only; the frozen ones are constants.
  grad_fn = jax.value_and_grad(
      lambda trained, frozen, *args: loss_fn(params_lib.join(trained, frozen), *args),
      has_aux=True)

  def train_step(state: TrainState, batch, inputs=None):
    inputs = inputs or {}
    for feature in features:
      batch = feature.prepare_batch(batch, inputs.get(feature.name))
    rng = jax.random.fold_in(dropout_key, state.step)
    global_counts = objectives_lib.counts(objectives, batch)
    trained, frozen = params_lib.split(state.params, trainable or (lambda path: True))
    if grad_accum_steps == 1:
      (loss, sums), grads = grad_fn(trained, frozen, batch, rng, global_counts)
    else:
      micro = _microbatches(batch, grad_accum_steps)
      def accumulate(carry, step_input):
        i, micro_batch = step_input
        (loss, sums), grads = grad_fn(trained, frozen, micro_batch, jax.random.fold_in(rng, i),
                                      global_counts)
        return jax.tree.map(jnp.add, carry, (loss, sums, grads)), None
      shapes = jax.eval_shape(grad_fn, trained, frozen, jax.tree.map(lambda x: x[0], micro), rng,
                              global_counts)
      zero = jax.tree.map(jnp.zeros_like, (shapes[0][0], shapes[0][1], shapes[1]))
      (loss, sums, grads), _ = jax.lax.scan(
          accumulate, zero, (jnp.arange(grad_accum_steps), micro))
    metrics = {f"train/{k}": s / jnp.maximum(c, 1.0) for k, (s, c) in sums.items()}
    for feature in features:
      for r in feature.regularizers:
        value, reg_grads = jax.value_and_grad(
            lambda t, r=r, data=inputs.get(feature.name): r.fn(params_lib.join(t, frozen), data)
        )(trained)
        loss, grads = loss + value, jax.tree.map(jnp.add, grads, reg_grads)
        metrics[f"train/{r.name}"] = value
    grad_norm, what = nonfinite.grad_norm_and_first_nonfinite(loss, grads)
    grads = params_lib.join(grads, jax.tree.map(jnp.zeros_like, frozen))
    def apply_update():
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state
    # A non-finite step's update is dropped: a branch, not a select over the whole state.
    params, opt_state = jax.lax.cond(what < 0, apply_update,
                                     lambda: (state.params, state.opt_state))
    health = nonfinite.update(state.health, what, state.step, nonfinite_limit)
    metrics.update({"train/loss": loss, "train/lr": lr_schedule(state.step),
                    "train/grad_norm": grad_norm, "train/skipped_steps": health.skipped})
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      health=health), metrics

  return train_step


def make_eval_step(model, eval_outputs):
  def eval_step(params, batch):
    return eval_outputs(apply_model(model, params, batch), batch)
  return eval_step
