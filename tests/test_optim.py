"""Optimizer: weight-decay mask by path pattern, schedules, trainable-parameter mask.

Gradient accumulation is tested in test_accumulation.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.train import optim


def test_decay_mask_by_path_pattern(tiny):
  config = tiny("mlm")
  params = {"backbone": {"layer_0": {"ln_mlp": {"scale": 1.0, "bias": 1.0},
                                     "mlp": {"up": {"kernel": 1.0, "bias": 1.0}}}},
            "token_embed": {"embedding": 1.0}}
  mask = optim.decay_mask(config.optim.no_decay)(params)
  assert mask["backbone"]["layer_0"]["mlp"]["up"]["kernel"] is True
  assert mask["backbone"]["layer_0"]["mlp"]["up"]["bias"] is False
  assert mask["backbone"]["layer_0"]["ln_mlp"]["scale"] is False
  assert mask["token_embed"]["embedding"] is False


def test_weight_decay_reaches_kernels_only(tiny):
  config = tiny("mlm")
  config.optim.update(weight_decay=0.5, clip_norm=0.0)
  config.schedule.update(warmup_steps=0, decay="constant")
  tx, _ = optim.build(config, ())
  params = {"dense": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # Decoupled decay (AdamW): -lr x weight_decay x param, untouched by Adam's normalisation.
  np.testing.assert_allclose(updates["dense"]["kernel"],
                             [-config.optim.learning_rate * 0.5] * 3, rtol=1e-6)
  assert float(jnp.abs(updates["dense"]["bias"]).sum()) == 0


def test_schedule_warmup_then_decay(tiny):
  config = tiny("mlm", steps=100)
  config.optim.learning_rate = 1.0
  config.schedule.update(warmup_steps=10, decay="linear", end_factor=0.0)
  lr = optim.schedule(config)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(55), lr(100)], [0, 0.5, 1, 0.5, 0], atol=1e-6)
  config.schedule.update(decay="cosine", end_factor=0.1)
  lr = optim.schedule(config)
  np.testing.assert_allclose([lr(10), lr(100)], [1.0, 0.1], atol=1e-6)


def test_frozen_parameters_get_no_update_and_no_optimizer_state(tiny):
  config = tiny("mlm")
  config.optim.update(weight_decay=0.5, trainable=(r"^heads_",))
  config.schedule.update(warmup_steps=0, decay="constant")
  tx, _ = optim.build(config, ())
  params = {"backbone": {"dense": {"kernel": jnp.ones((4, 4))}},
            "heads_mlm": {"dense": {"kernel": jnp.ones((4, 4))}}}
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert float(jnp.abs(updates["backbone"]["dense"]["kernel"]).sum()) == 0
  # AdamW's first step on gradients of 1: Adam's m / sqrt(v) = 1, plus the decay 0.5 x param.
  np.testing.assert_allclose(updates["heads_mlm"]["dense"]["kernel"],
                             np.full((4, 4), -config.optim.learning_rate * 1.5), rtol=1e-5)
  # Adam's two moments exist for the 16 trainable numbers only (plus scalar counts).
  sizes = [x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim]
  assert sum(sizes) == 2 * 16
