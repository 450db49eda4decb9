"""Prefix tuning (Li & Liang, 2021): learned keys and values in front of every layer's own.

Each block's attention gets `peft.num_virtual_tokens` key and value vectors per key/value head
(`<block>/attention/prefix/{key,value}`, each (num_virtual_tokens, kv_heads, head_dim)),
concatenated before the keys and values of the tokens; every query sees them (padding, packed
segments and causality mask only the real keys). Rotary models do not rotate the prefixes.

With `peft.prefix_projection=H` the prefixes are reparameterised during training, as in the paper
and HF PEFT: an embedding (num_virtual_tokens, hidden) -> Linear(H) -> tanh, shared by all blocks
(`backbone/prefix_encoder/`), then Linear(H -> 2 * kv_heads * head_dim) per block
(`<block>/attention/prefix/{kernel,bias}`): the per-block slices of HF's one
Linear(H -> num_layers * 2 * kv_heads * head_dim), ordered (layer, key/value, head, head_dim).
`materialize` computes the final prefixes from the trained MLP (the parameters of the same model
with `prefix_projection=0`, for export and inference).

The mask is dense, so prefixes run on the XLA attention only (`refusal` for cuDNN).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research import params as params_lib

ENCODER = "prefix_encoder"  # the shared MLP's subtree under backbone/
LAYER = "prefix"  # each block's subtree under attention/

# Initialisers as HF PEFT's PrefixEncoder: torch's Embedding (N(0, 1)) and Linear (uniform with
# bound 1 / sqrt(fan_in); biases start at zero here).
_EMBEDDING_INIT = nn.initializers.normal(1.0)


def _linear_init(n_out_axes: int):
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=0,
                                          out_axis=tuple(range(1, 1 + n_out_axes)))


def refusal(impl: str) -> str | None:
  """Why prefix tuning cannot run on attention implementation `impl` (None: it can)."""
  if impl == "cudnn":
    return ("peft.method=prefix needs a dense attention mask over the prefixes, which the cuDNN "
            "attention path here does not take; set model.attention_impl=xla")
  return None


class SharedEncoder(nn.Module):
  """tanh(Linear(H)(embedding)): (num_virtual_tokens, H), shared by every block."""
  cfg: "ModelConfig"

  @nn.compact
  def __call__(self):
    cfg, peft = self.cfg, self.cfg.peft
    embedding = self.param("embedding", nn.with_logical_partitioning(_EMBEDDING_INIT,
                                                                     (None, "embed")),
                           (peft.num_virtual_tokens, cfg.hidden_size), cfg.param_dtype)
    h = nn.Dense(peft.prefix_projection, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                 kernel_init=nn.with_logical_partitioning(_linear_init(1), ("embed", None)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                 name="hidden")(embedding)
    return jnp.tanh(h)


class LayerPrefix(nn.Module):
  """One block's (key prefix, value prefix), each (num_virtual_tokens, kv_heads, head_dim)."""
  cfg: "ModelConfig"

  @nn.compact
  def __call__(self, shared):
    cfg, peft = self.cfg, self.cfg.peft
    shape = (cfg.kv_heads, cfg.head_dim)
    axes = ("kv_heads", "kv")
    if shared is None:
      make = lambda name: self.param(
          name, nn.with_logical_partitioning(_EMBEDDING_INIT, (None,) + axes),
          (peft.num_virtual_tokens,) + shape, cfg.param_dtype)
      return make("key"), make("value")
    kernel = self.param("kernel", nn.with_logical_partitioning(_linear_init(3), (None, None) + axes),
                        (peft.prefix_projection, 2) + shape, cfg.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           (None,) + axes),
                      (2,) + shape, cfg.param_dtype)
    out = jnp.einsum("nh,hckd->nckd", shared, kernel.astype(shared.dtype)) + bias
    return out[:, 0], out[:, 1]


def prepend(x, prefix):
  """(batch, length, heads, head_dim) keys or values with the prefix (n, heads, head_dim) first."""
  prefix = jnp.broadcast_to(prefix.astype(x.dtype), (x.shape[0],) + prefix.shape)
  return jnp.concatenate([prefix, x], axis=1)


def extend_mask(mask, num_virtual_tokens: int):
  """A (batch, 1, query, key) boolean mask with `num_virtual_tokens` visible keys in front."""
  visible = jnp.ones(mask.shape[:-1] + (num_virtual_tokens,), bool)
  return jnp.concatenate([visible, mask], axis=-1)


def materialize(params) -> dict:
  """The trained prefixes as direct parameters: `params` of a `peft.prefix_projection=H` model
  -> those of the same model with `prefix_projection=0` (each block's prefix/{key,value} computed
  by the MLP), the same outputs. Host arrays, float64 arithmetic. Without an MLP: unchanged."""
  flat = params_lib.flatten(params)
  shared = f"backbone/{ENCODER}/"
  if not any(p.startswith(shared) for p in flat):
    return params
  f64 = lambda p: np.asarray(flat[p], np.float64)
  h = np.tanh(f64(shared + "embedding") @ f64(shared + "hidden/kernel") + f64(shared + "hidden/bias"))
  out = {p: v for p, v in flat.items() if not p.startswith(shared)}
  for path in [p for p in flat if p.endswith(f"/{LAYER}/kernel")]:
    module = path[:-len("/kernel")]
    kernel, bias = out.pop(path), out.pop(f"{module}/bias")
    # kernel (lead..., H, 2, kv_heads, head_dim) -> prefixes (lead..., n, 2, kv_heads, head_dim)
    both = (np.einsum("nh,...hckd->...nckd", h, np.asarray(kernel, np.float64))
            + np.asarray(bias, np.float64)[..., None, :, :, :])
    out[f"{module}/key"] = both[..., 0, :, :].astype(kernel.dtype)
    out[f"{module}/value"] = both[..., 1, :, :].astype(kernel.dtype)
  return params_lib.unflatten(out)
