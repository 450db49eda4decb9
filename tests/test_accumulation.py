"""Gradient accumulation gives the full batch's loss and gradients, also when microbatches hold
different numbers of predictions (the step divides once, by the global count)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models, objectives
from research import params as params_lib
from research.models.dropout import Dropout
from research.train.step import TrainState, make_train_step

ROWS, SEQ, VOCAB, ACCUM = 8, 16, 64, 4
COMMON = dict(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=SEQ,
              dtype="float32", dropout_rate=0.0)


def gradient_recorder() -> optax.GradientTransformation:
  """An 'optimizer' whose state becomes the gradients it was given (and that updates nothing)."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def predictions_per_row() -> np.ndarray:
  """Microbatch i of 4 holds rows i and i + 4: 2, 8, 14 and 20 predictions."""
  return 1 + 3 * (np.arange(ROWS) % ACCUM)


def mlm_case(rng):
  n = predictions_per_row()
  slots = n.max()
  ids = rng.integers(5, VOCAB, (ROWS, SEQ)).astype(np.int32)
  positions = np.stack([np.sort(rng.choice(np.arange(1, SEQ - 1), slots, replace=False))
                        for _ in range(ROWS)]).astype(np.int32)
  weights = (np.arange(slots)[None, :] < n[:, None]).astype(np.float32)
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
           "token_type_ids": np.zeros_like(ids), "masked_positions": positions,
           "masked_ids": np.take_along_axis(ids, positions, 1) * (weights > 0),
           "masked_weights": weights, "unigram_top": np.zeros(ROWS, np.int32)}
  return dict(COMMON, kind="encoder", heads=("mlm",), pooler=False), objectives.masked_lm(), batch


def clm_case(rng):
  lengths = 1 + predictions_per_row()  # n + 1 tokens hold n next-token predictions
  ids = rng.integers(1, VOCAB, (ROWS, SEQ)).astype(np.int32)
  mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
  batch = {"input_ids": ids * mask, "attention_mask": mask,
           "unigram_top": np.zeros(ROWS, np.int32)}
  return (dict(COMMON, kind="decoder", heads=("lm",), type_vocab_size=0, pooler=False),
          objectives.causal_lm(), batch)


def ner_case(rng):
  n = predictions_per_row()
  ids = rng.integers(5, VOCAB, (ROWS, SEQ)).astype(np.int32)
  labels = np.full((ROWS, SEQ), -100, np.int32)
  for r in range(ROWS):
    labelled = np.sort(rng.choice(np.arange(1, SEQ - 1), n[r], replace=False))
    labels[r, labelled] = rng.integers(0, 5, n[r])
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
           "token_type_ids": np.zeros_like(ids), "labels": labels}
  return (dict(COMMON, kind="encoder", heads=("token_classification=token_classification:5",)),
          objectives.token_classification("ner", "token_classification"), batch)


def run_step(model_cfg, objective, batch, accum):
  model = models.build(model_cfg)
  inputs = {k: batch[k][:1] for k in ("attention_mask", "token_type_ids", "masked_positions")
            if k in batch}
  params = model.init(jax.random.key(0), batch["input_ids"][:1], **inputs)["params"]
  tx = gradient_recorder()
  step = jax.jit(make_train_step(model, (objective,), tx, optax.constant_schedule(0.0),
                                 jax.random.key(1), grad_accum_steps=accum))
  state = TrainState.create(params, tx.init(params))
  new_state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
  return float(metrics["train/loss"]), float(metrics[f"train/{objective.name}/loss"]), \
      new_state.opt_state


@pytest.mark.parametrize("case", [mlm_case, clm_case, ner_case])
def test_accumulating_four_microbatches_equals_the_full_batch(case):
  model_cfg, objective, batch = case(np.random.default_rng(0))
  counts = [float(objective.count({k: v[i::ACCUM] for k, v in batch.items()}))
            for i in range(ACCUM)]
  assert counts == [2.0, 8.0, 14.0, 20.0]  # microbatches hold different numbers of predictions
  loss_1, metric_1, grads_1 = run_step(model_cfg, objective, batch, 1)
  loss_4, metric_4, grads_4 = run_step(model_cfg, objective, batch, ACCUM)
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-6)
  assert metric_1 == pytest.approx(loss_1, rel=1e-6)  # train/loss is the objective's mean
  np.testing.assert_allclose(metric_4, metric_1, rtol=1e-6)
  flat_1, flat_4 = params_lib.flatten(grads_1), params_lib.flatten(grads_4)
  assert flat_1.keys() == flat_4.keys()
  worst = 0.0
  for path, g1 in flat_1.items():
    g1, g4 = np.asarray(g1), np.asarray(flat_4[path])
    scale = np.abs(g1).max()
    if scale < 1e-9:  # zero in exact arithmetic (e.g. the key bias: softmax ignores a shift)
      assert np.abs(g4).max() < 1e-9, path
      continue
    worst = max(worst, np.abs(g4 - g1).max() / scale)
  assert worst <= 1e-6


def test_a_mean_of_microbatch_means_would_differ():
  """What the step used to compute: the test above can tell it from the right answer."""
  model_cfg, objective, batch = mlm_case(np.random.default_rng(0))
  model = models.build(model_cfg)
  params = model.init(jax.random.key(0), batch["input_ids"][:1],
                      masked_positions=batch["masked_positions"][:1])["params"]
  means = []
  for i in range(ACCUM):
    micro = {k: jnp.asarray(v[i::ACCUM]) for k, v in batch.items()}
    outputs = model.apply({"params": params}, micro["input_ids"],
                          masked_positions=micro["masked_positions"])
    loss, _ = objectives.loss_and_sums((objective,), outputs, micro,
                                       objectives.counts((objective,), micro))
    means.append(float(loss))
  full, _, _ = run_step(model_cfg, objective, batch, 1)
  assert abs(np.mean(means) - full) > 1e-3 * full


class MaskRecorder(nn.Module):
  """Row r's output is w[r] times a dropout mask (input_ids[:, 0] holds r), so the gradient of
  the sum of the outputs with respect to w[r] is the mask row r was given: 0 or 2 (rate 0.5)."""

  @nn.compact
  def __call__(self, input_ids, deterministic=True):
    w = self.param("w", nn.initializers.ones, (ROWS, SEQ))
    kept = Dropout(0.5)(jnp.ones((input_ids.shape[0], SEQ)), deterministic=deterministic)
    return {"out": w[input_ids[:, 0]] * kept}


def test_dropout_masks_differ_across_steps_and_microbatches():
  """The step draws dropout from fold_in(key, step), microbatch i from fold_in(that, i): rows at
  the same place of two microbatches, and a row at two steps, get different masks."""
  model, tx = MaskRecorder(), gradient_recorder()
  summed = objectives.Objective("sum", lambda batch: jnp.float32(1.0),
                                lambda outputs, batch: {"loss": outputs["out"].sum()})
  step = jax.jit(make_train_step(model, (summed,), tx, optax.constant_schedule(0.0),
                                 jax.random.key(1), grad_accum_steps=2))
  batch = {"input_ids": jnp.arange(ROWS, dtype=jnp.int32)[:, None]}
  params = model.init(jax.random.key(0), batch["input_ids"])["params"]
  state = TrainState.create(params, tx.init(params))
  masks = []
  for _ in range(2):
    state, _ = step(state, batch)
    masks.append(np.asarray(state.opt_state["w"]))  # the gradients: each row's mask
  assert set(np.unique(masks)) == {0.0, 2.0}
  # Microbatch 0 holds rows 0 and 2, microbatch 1 rows 1 and 3 (`_microbatches`).
  for m in masks:
    assert not np.array_equal(m[0], m[1]) and not np.array_equal(m[2], m[3])
  for row in range(ROWS):
    assert not np.array_equal(masks[0][row], masks[1][row]), row
