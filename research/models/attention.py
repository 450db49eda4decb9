"""softmax(q k / sqrt(head_dim)) v: our XLA form, jax's call for cuDNN's fused kernel, or Pallas's
TPU flash attention kernel (`impl='pallas_flash'`: research/models/tpu_attention.py).

`dot_product_attention(q, k, v, impl, mask=, is_causal=)` takes what `jax.nn.dot_product_attention`
takes (q (batch, query, heads, head_dim), k and v (batch, key, kv_heads, head_dim); a boolean
`mask` broadcastable to (batch, heads, query, key); `is_causal`) and gives the same result within
float round-off. `impl='cudnn'` is jax's call. `impl='xla'` on a CPU is computed here, in the form that
XLA:CPU runs fastest (elsewhere jax's XLA path, see `dot_product_attention`):
  - heads-major: q, k, v are transposed once to (batch, heads, length, head_dim), so both batched
    matmuls contract their operands' last dimensions and the (query, key) tensor is born in the
    layout the softmax reads (jax's einsum on (batch, length, heads, head_dim) leaves XLA:CPU
    copying the scores between layouts and running small strided matmuls);
  - the softmax is not normalised in place: p = exp(s - max) multiplies v unnormalised and the
    (query, head_dim) result is divided by the row sums, a pass over an array head_dim / key
    times the size of the scores (flash attention's order of operations, without its tiling);
  - the mask is a `where` on the logits, fused into the pass that computes exp.
Logits and the softmax are float32 (as jax's XLA path computes them), probabilities go into the
second matmul in v's dtype. Grouped-query attention (kv_heads < heads) shares each key/value
head across its group of query heads without repeating them.
"""
import jax
import jax.numpy as jnp
import numpy as np

from research import compile_options
from research.models import tpu_attention

# What a masked logit becomes (jax's choice: finite, so a fully masked row stays finite).
MASKED = np.float32(-0.7 * np.finfo(np.float32).max)


def dot_product_attention(q, k, v, impl: str, **mask_kwargs):
  """`impl` 'xla': ours where the computation runs on a CPU (`mask`, `is_causal`), jax's XLA path
  elsewhere (on a TPU, XLA's cost analysis charges our form more HBM bytes: GPT-2 medium at 2048
  tokens on a v5e-8, roofline 1073 ms against 948 ms; not measured on a chip); 'pallas_flash':
  `tpu_attention.flash_attention`
  (`segment_ids`, `is_causal`); else `jax.nn.dot_product_attention` with `mask_kwargs` (cuDNN also
  takes sequence lengths). `layers.AttentionMask.kwargs(impl)` gives each its `mask_kwargs`."""
  if impl == "xla" and compile_options.target_platform() == "cpu":
    return xla_attention(q, k, v, **mask_kwargs)
  if impl == tpu_attention.IMPL:
    return tpu_attention.flash_attention(q, k, v, **mask_kwargs)
  return jax.nn.dot_product_attention(q, k, v, implementation=impl, **mask_kwargs)


def xla_attention(q, k, v, mask=None, is_causal: bool = False):
  """Our XLA attention (module doc); (batch, query, heads, head_dim) in q's dtype."""
  batch, length, heads, head_dim = q.shape
  kv_heads, keys = k.shape[2], k.shape[1]
  group = heads // kv_heads
  # (batch, kv_heads, group, query, head_dim) and (batch, kv_heads, key, head_dim)
  q = q.reshape(batch, length, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32)
  logits = logits * np.float32(1.0 / np.sqrt(head_dim))
  allowed = None
  if mask is not None:  # (batch | 1, heads | 1, query | 1, key) -> the grouped heads' shape
    mask = jnp.broadcast_to(mask, (mask.shape[0], heads, *mask.shape[2:]))
    allowed = mask.reshape(mask.shape[0], kv_heads, group, *mask.shape[2:])
  if is_causal:
    causal = jnp.tril(jnp.ones((length, keys), bool))  # as jax's: query i sees keys <= i
    allowed = causal if allowed is None else allowed & causal
  if allowed is not None:
    logits = jnp.where(allowed, logits, MASKED)
  out = softmax_times(logits, v)
  return out.astype(v.dtype).reshape(batch, heads, length, head_dim).transpose(0, 2, 1, 3)


@jax.custom_jvp
def softmax_times(logits, v):
  """softmax(logits) @ v in float32: logits (batch, kv_heads, group, query, key) float32, v
  (batch, kv_heads, key, head_dim).

  The forward normalises after the product (module doc). Its derivative is defined, not traced:
  traced, the quotient's two terms (g.v_j / sum and g.out / sum^2) cancel only to round-off where
  the softmax saturates, and that residue, multiplied by the keys, gave a gradient 3e7 times
  jax's when a diverging run's logits were ~1e4 (tests/test_nonfinite.py's lr 1e3 run). The
  tangent below is the softmax's own, y (dx - sum(y dx)), as jax.nn.softmax defines it: exactly
  zero on a saturated row, and its transpose is jax's backward."""
  return _unnormalised_times(logits, v)[0]


def _times(probs, v):
  """(batch, kv_heads, group, query, key) weights @ (batch, kv_heads, key, head_dim) values, in
  the values' dtype, accumulated in float32."""
  return jnp.einsum("bkgts,bksh->bkgth", probs.astype(v.dtype), v,
                    preferred_element_type=jnp.float32)


def _unnormalised_times(logits, v):
  """(softmax(logits) @ v, the unnormalised exp, its row sums): normalised after the product."""
  unnormalised = jnp.exp(logits - logits.max(-1, keepdims=True))
  total = unnormalised.sum(-1, keepdims=True)
  return _times(unnormalised, v) / total, unnormalised, total


@softmax_times.defjvp
def _softmax_times_jvp(primals, tangents):
  (logits, v), (logits_dot, v_dot) = primals, tangents
  out, unnormalised, total = _unnormalised_times(logits, v)
  probs = unnormalised / total
  probs_dot = probs * (logits_dot - jnp.sum(probs * logits_dot, -1, keepdims=True))
  return out, _times(probs_dot, v) + _times(probs, v_dot)
