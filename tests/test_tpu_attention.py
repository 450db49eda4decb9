"""`model.attention_impl='pallas_flash'`: Pallas's TPU flash attention kernel, run here in Pallas's
interpreter (interpret=True), against our XLA attention (values and gradients, on every real
query) with padding, packed documents, the causal flag and grouped-query attention; its mask
arguments; the one-line refusal of a length the kernel cannot tile; the decode step's fallback;
(slow) a model's loss and gradients, and the train step compiled for a TPU slice with the kernel
in it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import UserError
from research.models import attention, layers, tpu_attention


def inputs(batch=2, length=128, heads=4, kv_heads=2, head_dim=32, seed=0):
  kq, kk, kv, kw = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (batch, length, heads, head_dim), jnp.float32)
  k = jax.random.normal(kk, (batch, length, kv_heads, head_dim), jnp.float32)
  v = jax.random.normal(kv, (batch, length, kv_heads, head_dim), jnp.float32)
  w = jax.random.normal(kw, (batch, length, heads, head_dim), jnp.float32)
  return q, k, v, w


def masks(length=128):
  """Row 0: two packed documents then right padding; row 1: one document, no padding."""
  padding = np.ones((2, length), np.int32)
  padding[0, 100:] = 0
  segments = np.zeros((2, length), np.int32)
  segments[0, 40:100] = 1
  return jnp.asarray(padding), jnp.asarray(segments)


def both(q, k, v, w, mask: layers.AttentionMask):
  """(out, grads of a loss over the real queries) of the kernel and of our XLA form."""
  real = (jnp.ones(q.shape[:2]) if mask.padding is None else mask.padding)[:, :, None, None]

  def loss(impl, q, k, v):
    out = attention.dot_product_attention(q, k, v, impl, **mask.kwargs(impl))
    return jnp.sum(out * w * real), out * real

  return [jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(impl, q, k, v)
          for impl in (tpu_attention.IMPL, "xla")]


def assert_close(got, want):
  (got_loss, got_out), got_grads = got
  (want_loss, want_out), want_grads = want
  np.testing.assert_allclose(got_out, want_out, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for g, h in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, h, atol=5e-5, rtol=5e-5)
  assert float(jnp.abs(want_grads[1]).max()) > 0.1  # the gradients are not trivially zero


def test_padding_packed_causal_gqa_match_xla():
  """All at once, the case a packed causal-LM batch is: padding, two documents, causal, 4 query
  heads over 2 key/value heads."""
  padding, segments = masks()
  assert_close(*both(*inputs(), layers.AttentionMask(padding, segments, causal=True)))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["padding", "packed", "causal", "gqa_none", "bidirectional"])
def test_each_mask_matches_xla(case):
  padding, segments = masks(256)
  mask = {"padding": layers.AttentionMask(padding, None, causal=False),
          "packed": layers.AttentionMask(None, segments, causal=False),
          "causal": layers.AttentionMask(None, None, causal=True),
          "gqa_none": layers.AttentionMask(None, None, causal=False),
          "bidirectional": layers.AttentionMask(padding, segments, causal=False)}[case]
  kv_heads = 1 if case == "gqa_none" else 4
  assert_close(*both(*inputs(length=256, kv_heads=kv_heads), mask))


def test_mask_becomes_segment_ids():
  padding, segments = masks()
  got = tpu_attention.mask_kwargs(padding, segments, causal=True)
  assert got["is_causal"] is True
  ids = np.asarray(got["segment_ids"])
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids[0, :40], 1)
  np.testing.assert_array_equal(ids[0, 40:100], 2)
  np.testing.assert_array_equal(ids[0, 100:], 0)  # padding: its own id, matching no real token
  np.testing.assert_array_equal(ids[1], 1)
  only_padding = np.asarray(tpu_attention.mask_kwargs(padding, None, False)["segment_ids"])
  np.testing.assert_array_equal(only_padding, padding)
  assert tpu_attention.mask_kwargs(None, None, False) == {"segment_ids": None, "is_causal": False}


def test_a_length_the_kernel_cannot_tile_is_one_line():
  q, k, v, _ = inputs(length=96)
  with pytest.raises(UserError) as e:
    tpu_attention.flash_attention(q, k, v)
  assert str(e.value) == ("model.attention_impl='pallas_flash' needs a sequence length that is a "
                          "multiple of 128 (the Pallas kernel's smallest block), got 96; set "
                          "data.seq_len, or model.attention_impl=xla")
  assert tpu_attention.block_size(2048) == 512 and tpu_attention.block_size(384) == 128


def test_config_accepts_it_and_refuses_a_misspelling():
  from research.models import ModelConfig  # pylint: disable=g-import-not-at-top
  ModelConfig(attention_impl="pallas_flash").validate()
  with pytest.raises(UserError) as e:
    ModelConfig(attention_impl="pallas").validate()
  assert str(e.value) == ("model.attention_impl must be one of (None, '', 'xla', 'cudnn', "
                          "'pallas_flash'), got 'pallas'")


# ---------------------------------------------------------------------------------------------
# Slow: a model, the decode step, the TPU compile.
# ---------------------------------------------------------------------------------------------
def runlocal_decoder(**model):
  from research import config_lib  # pylint: disable=g-import-not-at-top
  from research.run_shape import shape_config  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file("clm", "runlocal")
  config.model.update(model)
  return shape_config(config)[0]


@pytest.mark.slow
def test_decoder_loss_and_gradients_match_xla():
  """The runlocal GPT-2-style decoder (2 layers x 128, float32) on a packed, padded batch of 128
  tokens: the same logits on real tokens and the same parameter gradients."""
  from research import models  # pylint: disable=g-import-not-at-top
  from research.generate.cached_model import lm_logits_key  # pylint: disable=g-import-not-at-top
  from research.train import state as state_lib  # pylint: disable=g-import-not-at-top
  config = runlocal_decoder()
  padding, segments = masks()
  ids = jax.random.randint(jax.random.key(1), (2, 128), 0, config.model.vocab_size)
  batch = {"attention_mask": padding, "segment_ids": jnp.where(padding > 0, segments + 1, 0)}
  inputs = state_lib.dummy_inputs(config)
  params = models.build(models.ModelConfig.of_run(config)).init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, inputs.pop("input_ids"),
      **inputs)["params"]

  def loss(impl, params):
    config.model.attention_impl = impl
    model = models.build(models.ModelConfig.of_run(config))
    logits = model.apply({"params": params}, ids, **batch)[lm_logits_key(model.cfg)]
    real = padding[:, :, None]
    return jnp.sum(jax.nn.log_softmax(logits.astype(jnp.float32)) * real) / 1e3, logits * real

  grad = jax.value_and_grad(loss, 1, has_aux=True)
  (got, got_logits), got_grads = jax.jit(grad, static_argnums=0)("pallas_flash", params)
  (want, want_logits), want_grads = jax.jit(grad, static_argnums=0)("xla", params)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, h in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, h, atol=1e-5, rtol=1e-3)


def test_decode_steps_fall_back_to_xla():
  """Generation's prefill and cached step (a dense mask over the cache): the XLA form's outputs,
  exactly, for a model configured with the kernel."""
  from research import models  # pylint: disable=g-import-not-at-top
  from research.generate.cached_model import CachedModel  # pylint: disable=g-import-not-at-top
  cfg = models.ModelConfig(kind="decoder", vocab_size=64, hidden_size=32, num_layers=1,
                           num_heads=2, mlp_dim=64, max_len=64, heads=("lm",), dtype="float32")
  ids = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  mask = jnp.ones((2, 16), jnp.int32).at[0, :5].set(0)
  params = models.build(cfg).init(jax.random.key(0), ids)["params"]
  outs = []
  for impl in ("pallas_flash", "xla"):
    model = CachedModel(dataclasses.replace(cfg, attention_impl=impl), 16, 4)
    logits, cache = model.prefill(params, ids, mask)
    step_logits, _ = model.step(params, cache, jnp.argmax(logits, -1), mask, 0)
    outs.append((logits, step_logits))
  for got, want in zip(*outs):
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_train_step_compiles_for_a_tpu_slice_with_the_kernel(monkeypatch):
  """The runlocal decoder's train step with `attention_impl=pallas_flash`, compiled for a v5e 2x2
  over fsdp (libtpu, no TPU): the kernel is in the program as Mosaic custom calls, per device
  (shard_map), and no (query, key) score tensor of the XLA form is."""
  pytest.importorskip("libtpu")
  from research import memory, tpu  # pylint: disable=g-import-not-at-top
  for name in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
    monkeypatch.delenv(name, raising=False)
  topology = tpu.parse_topology("v5e:2x2")
  texts = {}
  for impl in ("pallas_flash", "xla"):
    config = runlocal_decoder(attention_impl=impl)
    config.mesh.update(data=1, fsdp=-1)
    mesh = tpu.topology_mesh(config, topology, tpu.tpu_devices(topology))
    texts[impl] = memory.abstract_step(config, mesh).compile_train().as_text()
  assert texts["pallas_flash"].count("tpu_custom_call") >= 3 * 2  # fwd, dkv, dq per layer
  assert "tpu_custom_call" not in texts["xla"]
  # The XLA form's (rows per chip, heads, query, key) mask or probabilities; the kernel's program
  # has none (its f32[8,2,128,128] are the softmax statistics l, m: 128 lanes per query).
  score_tensors = lambda text: [d for d in ("pred", "bf16") if f"{d}[8,2,128,128]" in text]
  assert score_tensors(texts["xla"]) and not score_tensors(texts["pallas_flash"])
