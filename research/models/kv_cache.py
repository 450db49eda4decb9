"""The key/value cache of incremental decoding (`research.generate`).

A decoder called with a `DecodeStep` writes the keys and values of this call's tokens into
per-layer cache variables (flax collection 'cache': `cached_key`, `cached_value`, each (batch, cache_length,
kv_heads, head_dim); stacked on a leading layers axis with `model.scan_layers`) from slot
`index` on, and its queries attend to the whole cache through one dense mask: slot s is visible
to the query in slot q when `valid[s]` (not left padding) and s <= q. Every step therefore reads
all `cache_length` slots, so shapes are static (one compilation per prompt bucket and budget)
and a step costs the same at position 64 as at position 960.

The first call (`prefill=True`) creates the cache (zeros, `cache_length = valid.shape[1]`) when
the caller passes no 'cache' collection; later calls pass the cache back (`mutable=['cache']`).
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTION = "cache"


@flax.struct.dataclass
class DenseMask:
  """A precomputed (batch, 1, query, key) boolean mask, with `layers.AttentionMask`'s methods."""
  mask: jax.Array

  def kwargs(self, impl: str) -> dict:
    del impl  # every implementation takes a dense mask
    return {"mask": self.mask}

  def dense(self, batch: int, length: int):
    del batch, length
    return self.mask


@flax.struct.dataclass
class DecodeStep:
  """Where this call's tokens go in the cache, and which cache slots hold real tokens.

  index: int32 scalar, the slot of the call's first token. valid: (batch, cache_length) bool,
  False on left padding. prefill: the prompt's call (it may prepend a soft prompt; see
  `research.models.transformer`)."""
  index: jax.Array
  valid: jax.Array
  prefill: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def cache_length(self) -> int:
    return self.valid.shape[1]

  def mask(self, length: int) -> DenseMask:
    """Who the call's `length` queries may attend to among the cache slots."""
    query_slot = self.index + jnp.arange(length)
    key_slot = jnp.arange(self.cache_length)
    causal = key_slot[None, :] <= query_slot[:, None]  # (query, key)
    return DenseMask(self.valid[:, None, None, :] & causal[None, None])


def update(module: nn.Module, key, value, step: DecodeStep):
  """Writes this call's keys and values (batch, length, kv_heads, head_dim) into `module`'s cache
  from slot `step.index`; returns the whole cached keys and values."""
  shape = (key.shape[0], step.cache_length) + key.shape[2:]
  cached = []
  for name, new in (("cached_key", key), ("cached_value", value)):
    variable = module.variable(COLLECTION, name, jnp.zeros, shape, new.dtype)
    full = jax.lax.dynamic_update_slice(variable.value, new.astype(variable.value.dtype),
                                        (0, step.index, 0, 0))
    full = nn.with_logical_constraint(full, ("act_batch", "act_length", None, None))
    variable.value = full
    cached.append(full)
  return tuple(cached)


def select_rows(cache, rows):
  """The cache with its batch rows reordered/duplicated as `rows` (beam search's parents).

  Works for either layout: the batch axis is the fourth from the end of every leaf."""
  return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=leaf.ndim - 4), cache)


def repeat_rows(cache, times: int):
  """Each batch row `times` times in a row (row b -> rows b*times .. b*times+times-1)."""
  return jax.tree.map(lambda leaf: jnp.repeat(leaf, times, axis=leaf.ndim - 4), cache)
