"""The train state, created already sharded: `jax.eval_shape` -> shardings -> `jit(init)`.

Used by the trainer and by `research.bench`, so the benchmark times the state users train.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import params as params_lib
from research import sharding
from research.train.step import TrainState


def dummy_inputs(config, batch_size=1):
  shape = (batch_size, config.data.seq_len)
  inputs = {"input_ids": jnp.zeros(shape, jnp.int32), "attention_mask": jnp.ones(shape, jnp.int32)}
  if config.model.kind == "encoder":
    inputs["token_type_ids"] = jnp.zeros(shape, jnp.int32)
    inputs["masked_positions"] = jnp.zeros((batch_size, max_predictions(config)), jnp.int32)
  else:
    inputs["segment_ids"] = jnp.ones(shape, jnp.int32)
  return inputs


def max_predictions(config) -> int:
  """Positions the MLM head projects to the vocabulary per row (1 when there is no MLM)."""
  return config.objective.max_predictions if config.get("objective") else 1


def abstract_params(model, config, mesh, rules):
  """The parameters' shapes (`jax.eval_shape`: nothing allocated), after checking that `mesh`
  splits each evenly (UserError otherwise, e.g. 12 heads over tensor=8), so `resolve` can refuse
  a mesh, or a pattern that names no parameter, before the first write."""
  def init(rng):
    inputs = dummy_inputs(config)
    return model.init({"params": rng, "dropout": rng}, inputs.pop("input_ids"), **inputs)["params"]
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
    sharding.shardings_of(boxed, mesh, rules)
  return nn.unbox(boxed)


def create_sharded_state(model, tx, config, mesh, rules, rng):
  """Returns (state, abstract_state, shardings); parameters are born on their shards."""
  abstract, shardings, fresh = plan_sharded_state(model, tx, config, mesh, rules, rng)
  return fresh(), abstract, shardings


def plan_sharded_state(model, tx, config, mesh, rules, rng):
  """Returns (abstract_state, shardings, fresh): `fresh()` creates the state from `rng`, its
  parameters born on their shards, compiling the initialiser on its first call only. A run that
  resumes from a checkpoint never calls it: a restart compiles no initialiser (for MiniLM on 2
  CPU cores, 7 s of XLA compilation)."""
  def init(rng):
    inputs = dummy_inputs(config)
    boxed = model.init({"params": rng, "dropout": rng}, inputs.pop("input_ids"), **inputs)["params"]
    return TrainState.create(boxed, _unbox_masked(tx.init(boxed)))

  # No mesh context here: flax's DenseGeneral would constrain its flat (pre-reshape) kernel.
  with nn.logical_axis_rules(rules):
    abstract_boxed = jax.eval_shape(init, rng)
    shardings = sharding.shardings_of(abstract_boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(abstract_boxed), shardings)

  @functools.cache
  def fresh():
    with nn.logical_axis_rules(rules):
      return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)

  return abstract, shardings, fresh


def _unbox_masked(opt_state):
  """Frozen parameters (`optim.trainable`) have `optax.MaskedNode` slots, which optax leaves in
  their parameter's logical box; unbox them, as they hold no array to shard."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.value if is_box(x) and isinstance(x.value, optax.MaskedNode)
                      else x, opt_state, is_leaf=is_box)


def count_params(params, predicate=lambda path: True) -> int:
  return sum(int(np.prod(v.shape)) for path, v in params_lib.flatten(params).items()
             if predicate(path))
