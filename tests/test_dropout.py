"""research/models/dropout.py: jax's own dropout bits, computed in a fusable form."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import dropout


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5), (32, 128, 384)])
@pytest.mark.parametrize("seed", [0, 12345])
def test_bits_and_mask_are_jax_random_bits(shape, seed):
  key = jax.random.fold_in(jax.random.key(seed), 7)
  assert dropout.fusable(key, shape)
  ours = jax.jit(dropout.threefry_bits, static_argnums=1)(key, shape)
  np.testing.assert_array_equal(ours, jax.random.bits(key, shape))
  keep = jax.jit(dropout.keep_mask, static_argnums=(1, 2))(key, 0.9, shape)
  np.testing.assert_array_equal(keep, jax.random.bernoulli(key, 0.9, shape))
  if np.prod(shape) > 1000:  # a real mask: about 90% kept
    assert abs(float(keep.mean()) - 0.9) < 0.01


@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
def test_module_equals_flax_dropout(rate):
  x = jax.random.normal(jax.random.key(3), (4, 16, 8))
  rngs = {"dropout": jax.random.key(5)}
  ours = dropout.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(ours, nn.Dropout(rate).apply({}, x, deterministic=False,
                                                             rngs=rngs))
  np.testing.assert_array_equal(dropout.Dropout(rate).apply({}, x, deterministic=True), x)


def test_other_keys_fall_back_to_jax_random():
  rbg = jax.random.key(0, impl="rbg")
  assert not dropout.fusable(rbg, (8, 8))
  np.testing.assert_array_equal(dropout.keep_mask(rbg, 0.7, (8, 8)),
                                jax.random.bernoulli(rbg, 0.7, (8, 8)))


def test_mask_bits_are_not_a_loop():
  """jax's threefry lowers to a while loop over the whole array on CPU (one per dropout site);
  ours to elementwise ops. The key's derivation (`make_rng`, one element) stays a loop."""
  x = jnp.ones((4, 64))
  def loops(module):
    text = jax.jit(lambda x, key: module.apply({}, x, deterministic=False, rngs={"dropout": key})
                   ).lower(x, jax.random.key(0)).as_text()
    return [line for line in text.splitlines() if "stablehlo.while" in line]
  assert any("tensor<4x64xui32>" in line for line in loops(nn.Dropout(0.1)))
  ours = loops(dropout.Dropout(0.1))
  assert ours and not any("tensor<4x64xui32>" in line for line in ours)
