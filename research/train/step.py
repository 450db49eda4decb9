"""The train state and the jitted train and eval steps.

`train_step(state, batch) -> (state, metrics)`: dropout randomness is `fold_in(key, step)`, so a
step's result depends only on (state, batch); gradients can be accumulated over microbatches
with `lax.scan`. The loss is a task's `loss(outputs, batch) -> (loss, {name: (sum, count)})`.
`eval_step(params, batch)` returns the task's `eval_outputs(outputs, batch)`.
Both stay on device: nothing here forces a host sync.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from research.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def model_inputs(batch) -> dict:
  """The keyword arguments of `Transformer.__call__` that a batch provides."""
  keys = ("attention_mask", "token_type_ids", "segment_ids", "masked_positions")
  return {k: batch[k] for k in keys if k in batch}


def apply_model(model, params, batch, rng=None):
  return model.apply({"params": params}, batch["input_ids"], **model_inputs(batch),
                     deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})


def make_loss_fn(model, task_loss):
  def loss_fn(params, batch, rng):
    return task_loss(apply_model(model, params, batch, rng), batch)
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


def make_train_step(model, task_loss, tx, lr_schedule, dropout_key, grad_accum_steps=1):
  grad_fn = jax.value_and_grad(make_loss_fn(model, task_loss), has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(dropout_key, state.step)
    if grad_accum_steps == 1:
      (loss, sums), grads = grad_fn(state.params, batch, rng)
    else:
      def accumulate(carry, micro):
        i, micro_batch = micro
        (loss, sums), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss, sums, grads)), None
      zero = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], _microbatches(
          batch, grad_accum_steps)), rng)
      zero = jax.tree.map(jnp.zeros_like, (zero[0][0], zero[0][1], zero[1]))
      (loss, sums, grads), _ = jax.lax.scan(
          accumulate, zero, (jnp.arange(grad_accum_steps), _microbatches(batch, grad_accum_steps)))
      loss, grads = jax.tree.map(lambda x: x / grad_accum_steps, (loss, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {f"train/{k}": s / jnp.maximum(c, 1.0) for k, (s, c) in sums.items()}
    metrics.update({"train/loss": loss, "train/lr": lr_schedule(state.step),
                    "train/grad_norm": optax.global_norm(grads)})
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model, eval_outputs):
  def eval_step(params, batch):
    return eval_outputs(apply_model(model, params, batch), batch)
  return eval_step
