"""Dropout whose random bits are jax's own, computed in a form XLA fuses.

`Dropout` is `flax.linen.Dropout` (the same key from `make_rng('dropout')`, the same keep mask,
the same `x / keep_prob` scaling), so a run's losses are bit for bit what they were with flax's
module. What changes is how the bits are computed for a threefry key (the default,
`train.dropout_prng=threefry`): jax lowers its threefry hash on CPU as a rolled loop of five
passes over the whole array, one loop per dropout site, none fused with the mask; here the same
hash is written out as elementwise uint32 operations, which XLA fuses into the loop that applies
the mask: one pass, no while loop, no bits array in memory. The bits are those of
`jax.random.bits(key, shape)` under `jax_threefry_partitionable` (the counter of an element is its
flat index, computed from per-dimension iotas, so the SPMD partitioner gives every shard its own
counters and the mask is the same on any mesh). Other keys (`rbg`), arrays of 2**32 elements or
more and a non-partitionable threefry fall back to `jax.random.bernoulli`.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Threefry-2x32, 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"):
# the rotation constants of its even and odd groups of four rounds, and the key-schedule parity.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r: int):
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 block function of counters (x1, x2) under key (k1, k2), unrolled."""
  keys = (k1, k2, k1 ^ k2 ^ _PARITY)
  x1, x2 = x1 + keys[0], x2 + keys[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x1 = x1 + x2
      x2 = _rotl(x2, r) ^ x1
    x1 = x1 + keys[(group + 1) % 3]
    x2 = x2 + keys[(group + 2) % 3] + np.uint32(group + 1)
  return x1, x2


def flat_index(shape) -> jax.Array:
  """uint32 (shape): each element's row-major index, from per-dimension iotas (partitionable)."""
  strides = np.cumprod((1, *shape[:0:-1]))[::-1]
  index = jnp.zeros(shape, jnp.uint32)
  for dim, stride in enumerate(strides):
    index = index + lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride)
  return index


def fusable(key, shape) -> bool:
  """Whether `threefry_bits` reproduces `jax.random.bits(key, shape)`."""
  return (str(jax.random.key_impl(key)) == "threefry2x32" and jax.config.jax_threefry_partitionable
          and math.prod(shape) < 2**32)


def threefry_bits(key, shape) -> jax.Array:
  """uint32 bits equal to `jax.random.bits(key, shape)` for a threefry `key` (see `fusable`)."""
  k1, k2 = jax.random.key_data(key)
  hi = jnp.zeros(shape, jnp.uint32)  # the counters' upper words: 0 below 2**32 elements
  bits1, bits2 = threefry2x32(k1, k2, hi, flat_index(shape))
  return bits1 ^ bits2


def keep_mask(key, keep_prob: float, shape) -> jax.Array:
  """`jax.random.bernoulli(key, keep_prob, shape)`, fused where `fusable`."""
  if not fusable(key, shape):
    return jax.random.bernoulli(key, keep_prob, shape)
  # jax.random.uniform's float32 from bits: 23 random mantissa bits under exponent 0, minus 1.
  mantissa = (threefry_bits(key, shape) >> np.uint32(9)) | np.uint32(0x3F800000)
  uniform = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
  return uniform < np.float32(keep_prob)


class Dropout(nn.Module):
  """`flax.linen.Dropout` (no `broadcast_dims`) with `keep_mask`'s fused bits."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    keep = keep_mask(self.make_rng("dropout"), keep_prob, x.shape)
    return lax.select(keep, x / keep_prob, jnp.zeros_like(x))
