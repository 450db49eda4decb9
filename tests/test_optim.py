"""Optimizer: weight-decay mask by path pattern, schedules, gradient accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import models, objectives
from research.train import optim
from research.train.step import TrainState, make_train_step


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
  tx, _ = optim.build(config)
  params = {"dense": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates["dense"]["kernel"]).sum()) > 0
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


def test_gradient_accumulation_matches_full_batch():
  cfg = dict(kind="decoder", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
             max_len=16, type_vocab_size=0, heads=("lm",), dtype="float32", dropout_rate=0.0)
  model = models.build(cfg)
  ids = jax.random.randint(jax.random.key(0), (8, 12), 0, 64)
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "segment_ids": jnp.ones_like(ids),
           "unigram_top": jnp.zeros(8, jnp.int32)}
  params = model.init(jax.random.key(1), ids)["params"]
  tx = optax.sgd(0.1)
  objs = objectives.build(_cfg(name="clm"))
  task_loss = lambda outputs, b: objectives.combined_loss(objs, outputs, b)
  results = []
  for accum in (1, 2, 4):
    step = jax.jit(make_train_step(model, task_loss, tx, optax.constant_schedule(0.1),
                                   jax.random.key(2), grad_accum_steps=accum))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    new_state, metrics = step(state, batch)
    results.append((new_state.params, metrics["train/clm/loss"]))
  for p, loss in results[1:]:
    np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p, results[0][0])


def _cfg(**kw):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(kw)
