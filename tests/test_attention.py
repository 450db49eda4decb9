"""research/models/attention.py: our XLA attention equals jax.nn.dot_product_attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import attention, layers


def inputs(batch, length, heads, kv_heads, head_dim, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype),
          *(jax.random.normal(k, (batch, length, kv_heads, head_dim), dtype) for k in keys[1:]))


def masks(batch, length):
  padding = jnp.arange(length)[None] < jnp.array([length, length - 3, 2])[:batch, None]
  segments = jnp.where(jnp.arange(length) < length // 2, 1, 2)[None].repeat(batch, 0)
  return {"none": None, "padding": layers.attention_mask(padding, None, False),
          "packed": layers.attention_mask(padding, segments, False)}


@pytest.mark.parametrize("shape", [(2, 16, 4, 4, 8), (3, 10, 8, 2, 16), (2, 7, 6, 1, 4)])
@pytest.mark.parametrize("mask_name", ["none", "padding", "packed"])
@pytest.mark.parametrize("causal", [False, True])
def test_values_and_gradients_equal_jax(shape, mask_name, causal):
  """Multi-head, grouped-query and multi-query; padding, packed documents, causal."""
  q, k, v = inputs(*shape)
  mask = masks(shape[0], shape[1])[mask_name]
  weights = jnp.sin(jnp.arange(q.size).reshape(q.shape))  # a loss that reads every output
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * weights)
  ours = lambda q, k, v: attention.xla_attention(q, k, v, mask=mask, is_causal=causal)
  theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                                        implementation="xla")
  np.testing.assert_allclose(ours(q, k, v), theirs(q, k, v), rtol=1e-5, atol=2e-6)
  for got, want in zip(jax.grad(loss(ours), (0, 1, 2))(q, k, v),
                       jax.grad(loss(theirs), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_bfloat16_keeps_float32_softmax():
  q, k, v = inputs(2, 16, 4, 2, 8, jnp.bfloat16)
  mask = masks(2, 16)["padding"]
  ours = attention.xla_attention(q, k, v, mask=mask)
  assert ours.dtype == jnp.bfloat16
  exact = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=mask)
  np.testing.assert_allclose(ours.astype(jnp.float32), exact, atol=2e-2)


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_saturated_softmax_gradients_equal_jax(scale):
  """Large logits (a diverging run's): the gradient is jax's, zero where the softmax saturates,
  not the round-off of the quotient's two terms multiplied by the keys (which traced autodiff of
  the normalise-after-PV form gave: 8e-4 where jax gives 0 at 1e3, and 3e11 against 1e4 in
  tests/test_nonfinite.py's lr 1e3 run)."""
  q, k, v = inputs(2, 16, 4, 4, 8)
  q, k = q * scale, k * scale
  mask = masks(2, 16)["padding"]
  weights = jnp.cos(jnp.arange(q.size).reshape(q.shape))
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask=mask) * weights)
  theirs = lambda q, k, v, mask: jax.nn.dot_product_attention(q, k, v, mask=mask,
                                                              implementation="xla")
  for got, want in zip(jax.grad(loss(attention.xla_attention), (0, 1, 2))(q, k, v),
                       jax.grad(loss(theirs), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_forward_mode_derivative_equals_jax():
  """The derivative is defined as a JVP, so forward mode (jax.jvp) works too."""
  q, k, v = inputs(2, 12, 4, 2, 8)
  mask = masks(2, 12)["padding"]
  tangents = tuple(jnp.cos(x) for x in (q, k, v))
  _, ours = jax.jvp(lambda q, k, v: attention.xla_attention(q, k, v, mask=mask), (q, k, v),
                    tangents)
  _, theirs = jax.jvp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask),
                      (q, k, v), tangents)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=2e-6)
