"""Next-token score processing: repetition penalty, temperature, top-k and top-p (nucleus).

Pure functions of (batch, vocab) float32 scores; a removed token gets -inf. They follow
transformers' logits processors, so greedy and beam search with the same settings pick the same
tokens as its `generate`.
"""
import jax
import jax.numpy as jnp

from research.generate.settings import Settings


def penalize_repeats(scores, seen, penalty: float):
  """Scores of tokens already seen (`seen`: (batch, vocab) bool) divided by `penalty` where
  positive and multiplied by it where negative; `penalty == 1` returns `scores`."""
  if penalty == 1.0:
    return scores
  penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
  return jnp.where(seen, penalized, scores)


def top_k_only(scores, k: int):
  """Keeps the `k` best scores of each row (ties at the k-th kept too); 0 keeps all."""
  if k <= 0 or k >= scores.shape[-1]:
    return scores
  kth = jax.lax.top_k(scores, k)[0][:, -1:]
  return jnp.where(scores < kth, -jnp.inf, scores)


def top_p_only(scores, p: float):
  """Keeps the smallest set of best tokens whose probability reaches `p` (at least one)."""
  if p >= 1.0:
    return scores
  order = jnp.argsort(scores, axis=-1)  # ascending, as transformers sorts
  ascending = jnp.take_along_axis(scores, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  drop = cumulative <= 1.0 - p
  drop = drop.at[:, -1].set(False)  # the best token always stays
  removed = jnp.zeros_like(drop).at[jnp.arange(scores.shape[0])[:, None], order].set(drop)
  return jnp.where(removed, -jnp.inf, scores)


def for_sampling(scores, settings: Settings):
  """Temperature, then top-k, then top-p: the distribution `sample` draws from (as logits)."""
  scores = scores / settings.temperature
  return top_p_only(top_k_only(scores, settings.top_k), settings.top_p)
