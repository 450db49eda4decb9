"""Layers shared by the encoder and the decoder: attention, MLP, Transformer block, masks.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so how it is sharded
is decided by `research.sharding`'s rules, not here. Logical names used:
  vocab, embed, heads, kv, mlp (parameters); act_batch, act_length, act_embed (activations).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig


def normal_init(axes, stddev=0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


def zeros_init(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=zeros_init(("embed",)), name=name)


def constrain_hidden(x):
  """Pins (batch, length, embed) activations to the mesh; a no-op outside a mesh."""
  return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


def attention_mask(attention_mask, segment_ids, causal: bool):
  """Boolean mask (batch, 1, query, key): True where a query may attend to a key.

  `attention_mask` (batch, length) is 1 on real tokens; `segment_ids` (batch, length) number the
  documents packed into one row (0 = padding), and attention never crosses a segment boundary.
  Rows of padding queries may come out fully masked; their outputs are never used.
  """
  mask = attention_mask[:, None, None, :].astype(bool)
  if segment_ids is not None:
    mask &= segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  if causal:
    length = attention_mask.shape[-1]
    mask &= jnp.tril(jnp.ones((length, length), bool))[None, None]
  return mask


def positions_from_segments(segment_ids):
  """Position of each token inside its own segment: 0, 1, 2, ... restarting at each boundary."""
  length = segment_ids.shape[-1]
  idx = jnp.arange(length)[None, :]
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - start_idx


class Einsum(nn.Module):
  """`einsum(equation, x, kernel) + bias` with logically named parameters (multi-axis dense)."""
  equation: str
  kernel_shape: tuple
  kernel_axes: tuple
  bias_axes: tuple
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    bias_shape = tuple(self.kernel_shape[-len(self.bias_axes):])
    kernel = self.param("kernel", normal_init(self.kernel_axes), self.kernel_shape,
                        self.cfg.param_dtype)
    bias = self.param("bias", zeros_init(self.bias_axes), bias_shape, self.cfg.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.cfg.compute_dtype)
    return jnp.einsum(self.equation, x, kernel) + bias


class SelfAttention(nn.Module):
  """Multi-head self-attention through `jax.nn.dot_product_attention` (cuDNN fused on GPUs).

  Attention-probability dropout is not applied (fused kernels do not support it); dropout acts
  on the attention output instead.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    shape = (cfg.hidden_size, cfg.num_heads, cfg.head_dim)
    q, k, v = (Einsum("btd,dhk->bthk", shape, ("embed", "heads", "kv"), ("heads", "kv"), cfg,
                      name=n)(x) for n in ("query", "key", "value"))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=cfg.attention_impl)
    out = Einsum("bthk,hkd->btd", (cfg.num_heads, cfg.head_dim, cfg.hidden_size),
                 ("heads", "kv", "embed"), ("embed",), cfg, name="out")(out)
    return nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.cfg
    h = Einsum("btd,df->btf", (cfg.hidden_size, cfg.mlp_dim), ("embed", "mlp"), ("mlp",), cfg,
               name="up")(x)
    h = nn.gelu(h, approximate=cfg.activation == "gelu_tanh")
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    out = Einsum("btf,fd->btd", (cfg.mlp_dim, cfg.hidden_size), ("mlp", "embed"), ("embed",),
                 cfg, name="down")(h)
    return nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)


class TransformerBlock(nn.Module):
  """Attention + MLP with residuals; `pre_norm` picks GPT-2 (pre-LN) or BERT (post-LN) order."""
  cfg: ModelConfig
  pre_norm: bool

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    attn, mlp = SelfAttention(self.cfg, name="attention"), Mlp(self.cfg, name="mlp")
    ln1, ln2 = layer_norm(self.cfg, "ln_attention"), layer_norm(self.cfg, "ln_mlp")
    if self.pre_norm:
      x = x + attn(ln1(x), mask, deterministic)
      x = x + mlp(ln2(x), deterministic)
    else:
      x = ln1(x + attn(x, mask, deterministic))
      x = ln2(x + mlp(x, deterministic))
    return constrain_hidden(x)
