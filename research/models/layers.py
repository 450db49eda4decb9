"""Layers shared by the encoder and the decoder: attention, MLP, Transformer block, masks.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so how it is sharded
is decided by `research.sharding`'s rules, not here. Logical names used:
  vocab, embed, heads, kv_heads, kv, mlp (parameters); act_batch, act_length, act_embed, act_mlp
  (activations).
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention
from research.models import kv_cache
from research.models import layout
from research.models import quantization
from research.models import tpu_attention
from research.errors import UserError
from research.models.config import ModelConfig
from research.models.dropout import Dropout
from research.peft import adalora
from research.peft import adapter as adapter_lib
from research.peft import ia3
from research.peft import lora
from research.peft import prefix as prefix_lib
from research.peft.config import is_target

def gelu(x):
  """Exact GELU, x * Phi(x), as 0.5 x (1 + erf(x / sqrt 2)) (BERT's and torch's form). jax's
  `nn.gelu(approximate=False)` uses erfc, which XLA:CPU evaluates in several passes with two
  branches; erf is one polynomial. They agree to float32 round-off (tests/test_models.py)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0))).astype(x.dtype))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}


def normal_init(axes, stddev=0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


def zeros_init(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def output_dense(cfg: ModelConfig, features: int, name: str, out_axis=None,
                 in_axis="embed_out") -> nn.Dense:
  """The dense layer heads end with: hidden -> `features` (labels, 2 for spans, ...); a head's
  inner hidden -> hidden layer names its input axis 'embed' (two equal names cannot shard)."""
  return nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                  kernel_init=normal_init((in_axis, out_axis)),
                  bias_init=zeros_init((out_axis,)), name=name)


def layer_norm(cfg: ModelConfig, name: str) -> nn.Module:
  """LayerNorm (scale and bias) or, with `cfg.norm == 'rmsnorm'`, RMSNorm (scale only)."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                      param_dtype=cfg.param_dtype, scale_init=scale_init, name=name)
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
      scale_init=scale_init, bias_init=zeros_init(("embed",)), name=name)


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


def attention_impl(cfg: ModelConfig) -> str:
  """`cfg.attention_impl`, or by default cuDNN's fused kernel where it applies, else XLA.

  cuDNN needs a GPU, 16-bit compute and a head size that is a multiple of 8 up to 128.
  """
  if cfg.attention_impl:
    return cfg.attention_impl
  fused_ok = (jax.default_backend() == "gpu" and
              cfg.compute_dtype in (jnp.bfloat16, jnp.float16) and
              cfg.head_dim % 8 == 0 and cfg.head_dim <= 128)
  return "cudnn" if fused_ok else "xla"


@flax.struct.dataclass
class AttentionMask:
  """Who attends to whom, kept in the form each attention implementation runs fastest with.

  With neither padding nor segments, both get only the causal flag (if causal). Otherwise XLA
  gets the dense boolean mask of `attention_mask` above; cuDNN gets sequence lengths and the
  causal flag (its kernel skips padded and future blocks instead of reading a mask), or, with
  packed documents (`segment_ids`), the dense mask without the causal part. Sequence lengths
  assume right padding (1s then 0s in `attention_mask`), which is what every pipeline here makes.
  """
  padding: jax.Array | None  # (batch, length), 1 on real tokens; None: no padding
  segment_ids: jax.Array | None
  causal: bool = flax.struct.field(pytree_node=False)

  def kwargs(self, impl: str) -> dict:
    """Keyword arguments of `attention.dot_product_attention` for implementation `impl` (Pallas
    flash attention takes segment ids: `tpu_attention.mask_kwargs`)."""
    if impl == tpu_attention.IMPL:
      return tpu_attention.mask_kwargs(self.padding, self.segment_ids, self.causal)
    if self.padding is None and self.segment_ids is None:
      return {"is_causal": self.causal}  # nothing to mask but the future, if causal
    padding = self.padding
    if padding is None:
      padding = jnp.ones(self.segment_ids.shape, jnp.int32)
    if impl != "cudnn":
      return {"mask": attention_mask(padding, self.segment_ids, self.causal)}
    if self.segment_ids is not None:
      return {"mask": attention_mask(padding, self.segment_ids, causal=False),
              "is_causal": self.causal}
    lengths = padding.astype(jnp.int32).sum(-1)
    return {"is_causal": self.causal, "query_seq_lengths": lengths,
            "key_value_seq_lengths": lengths}

  def dense(self, batch: int, length: int):
    """The boolean (batch, 1, length, length) mask, whatever padding and segments there are."""
    padding = jnp.ones((batch, length), jnp.int32) if self.padding is None else self.padding
    return attention_mask(padding, self.segment_ids, self.causal)


def positions_from_segments(segment_ids):
  """Position of each token inside its own segment: 0, 1, 2, ... restarting at each boundary."""
  length = segment_ids.shape[-1]
  idx = jnp.arange(length)[None, :]
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - start_idx


def apply_rotary(x, positions, theta: float):
  """Rotary position embedding, 'rotate half' layout (as Llama checkpoints expect).

  x: (batch, length, heads, head_dim); positions: (batch, length).
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1]))
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # (batch, length, half)
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


class Einsum(nn.Module):
  """`einsum(equation, x, kernel) (+ bias)` with logically named parameters (multi-axis dense).

  Every projection of the backbone is one, so this is where PEFT methods that adapt projections
  act: a module whose path `cfg.peft` targets gets a LoRA update (research/peft/lora.py), an
  AdaLoRA one (research/peft/adalora.py) or IA3 rescaling (research/peft/ia3.py). It is also
  where `cfg.quantization` acts (research/models/quantization.py): int8 `kernel` + float32
  `kernel_scale` (+ `input_scale`, mode int8) read by an int8 matmul, or fake-quantized float
  kernels (mode qat)."""
  equation: str
  kernel_shape: tuple
  kernel_axes: tuple
  bias_axes: tuple
  cfg: ModelConfig
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    mode = self.cfg.quantization
    int8 = mode in quantization.INT8_MODES
    kernel = self.param("kernel", zeros_init(self.kernel_axes) if int8 else
                        normal_init(self.kernel_axes), self.kernel_shape,
                        jnp.int8 if int8 else self.cfg.param_dtype)
    x_in = x
    peft = self.cfg.peft
    targeted = peft.method in ("lora", "adalora", "ia3") and is_target(peft, "/".join(self.path))
    if not int8:
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.cfg.compute_dtype)
    if targeted and peft.method == "ia3" and ia3.is_feed_forward("/".join(self.path)):
      x = ia3.scale_input(self, x)
    if int8:
      y = self._int8_einsum(x, kernel, mode)
    else:
      if mode == "qat":
        kernel = quantization.fake_quantize(kernel, self.equation)
      y = jnp.einsum(self.equation, x, kernel)
    if self.use_bias:
      bias_shape = tuple(self.kernel_shape[-len(self.bias_axes):])
      bias = self.param("bias", zeros_init(self.bias_axes), bias_shape, self.cfg.param_dtype)
      y = y + bias.astype(y.dtype)
    if targeted and peft.method == "ia3" and not ia3.is_feed_forward("/".join(self.path)):
      y = ia3.scale_output(self, y)
    if targeted and peft.method == "lora":
      y = y + lora.low_rank_update(self, x_in, deterministic)
    if targeted and peft.method == "adalora":  # adalora's attribute read here, not at import:
      y = y + adalora.svd_update(self, x_in, deterministic)  # it imports research.models.layout
    return y

  def _int8_einsum(self, x, kernel, mode: str):
    scale_axes = tuple(None if n == 1 else a for n, a in zip(
        quantization.scale_shape(self.equation, self.kernel_shape), self.kernel_axes))
    kernel_scale = self.param(
        "kernel_scale", nn.with_logical_partitioning(nn.initializers.ones_init(), scale_axes),
        quantization.scale_shape(self.equation, self.kernel_shape), jnp.float32)
    input_scale = None
    if mode == "int8":
      input_scale = self.param("input_scale", nn.with_logical_partitioning(
          nn.initializers.ones_init(), ()), (), jnp.float32)
    return quantization.int8_einsum(self.equation, x, kernel, kernel_scale, input_scale,
                                    self.cfg.compute_dtype)


class SelfAttention(nn.Module):
  """Multi-head (or grouped-query) self-attention (`attention.dot_product_attention`).

  On GPUs with 16-bit compute that runs cuDNN's fused kernel (see `attention_impl`), elsewhere
  XLA (our form on a CPU, jax's on other targets: research/models/attention.py); `attention_impl='pallas_flash'` runs Pallas's TPU
  flash attention (research/models/tpu_attention.py) except where the mask is dense (the decode
  step, prefix tuning): those fall back to the XLA form.
  Attention-probability dropout is not applied (the fused kernel does not support it); dropout
  acts on the attention output instead. With prefix tuning (research/peft/prefix.py) the keys and
  values get learned prefixes; `prefix_hidden` is the shared prefix MLP's output (or None).
  With `decode` (a `kv_cache.DecodeStep`) the keys and values go to the cache and the queries
  attend to all of it (`mask` is then the step's `DenseMask`).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, prefix_hidden=None, decode=None):
    cfg = self.cfg
    d, hd = cfg.hidden_size, cfg.head_dim

    def project(name, heads, head_axis):
      return Einsum("btd,dhk->bthk", (d, heads, hd), ("embed", head_axis, "kv"), (head_axis, "kv"),
                    cfg, use_bias=cfg.use_bias, name=name)(x, deterministic)
    q = project("query", cfg.num_heads, "heads")
    k = project("key", cfg.kv_heads, "kv_heads")
    v = project("value", cfg.kv_heads, "kv_heads")
    if cfg.position_embedding == "rotary":
      q, k = (apply_rotary(t, positions, cfg.rope_theta) for t in (q, k))
    if decode is not None:
      k, v = kv_cache.update(self, k, v, decode)
    if self.is_mutable_collection(ATTENTION) and decode is None:  # asked for (distillation)
      self.sow(ATTENTION, "log_probs", attention_log_probs(q, k, mask.dense(*x.shape[:2])))
    impl = attention_impl(cfg)
    if impl == tpu_attention.IMPL and (decode is not None or cfg.peft.method == "prefix"):
      impl = "xla"  # a dense mask (the decode step's, the prefixes'): the kernel takes none
    kwargs = mask.kwargs(impl)
    if cfg.peft.method == "prefix":
      if prefix_lib.refusal(impl):
        raise UserError(prefix_lib.refusal(impl))
      key_prefix, value_prefix = prefix_lib.LayerPrefix(cfg, name=prefix_lib.LAYER)(prefix_hidden)
      k, v = prefix_lib.prepend(k, key_prefix), prefix_lib.prepend(v, value_prefix)
      kwargs = {"mask": prefix_lib.extend_mask(mask.dense(*x.shape[:2]),
                                               cfg.peft.num_virtual_tokens)}
    out = attention.dot_product_attention(q, k, v, impl, **kwargs)
    out = Einsum("bthk,hkd->btd", (cfg.num_heads, hd, d), ("heads", "kv", "embed"), ("embed",),
                 cfg, use_bias=cfg.use_bias, name="out")(out, deterministic)
    return Dropout(cfg.dropout_rate)(out, deterministic=deterministic)


class Mlp(nn.Module):
  """up -> activation -> down; with `gated_mlp`, down(act(gate(x)) * up(x)) (SwiGLU)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.cfg

    def dense(name, shape, axes, inputs):
      return Einsum("btd,df->btf", shape, axes, axes[-1:], cfg, use_bias=cfg.use_bias,
                    name=name)(inputs, deterministic)
    act = ACTIVATIONS[cfg.activation]
    h = dense("up", (cfg.hidden_size, cfg.mlp_dim), ("embed", "mlp"), x)
    if cfg.gated_mlp:
      h = act(dense("gate", (cfg.hidden_size, cfg.mlp_dim), ("embed", "mlp"), x)) * h
    else:
      h = act(h)
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    out = dense("down", (cfg.mlp_dim, cfg.hidden_size), ("mlp", "embed"), h)
    return Dropout(cfg.dropout_rate)(out, deterministic=deterministic)


# Collections the blocks sow into when an apply makes them mutable (distillation matches a
# student's blocks to a teacher's: research/objectives/distillation.py); otherwise nothing is kept
# or computed. Each block sows one array into each.
BLOCK_OUTPUTS = "block_outputs"  # the block's output (batch, length, hidden)
ATTENTION = "attention_log_probs"  # its attention's log-probabilities (batch, heads, query, key)
DISTILL_PROJECTION = "distill_projection"  # a block's learned map to a teacher's width


def per_block(collection) -> jax.Array:
  """The arrays the blocks sowed into one collection, (batch, num_layers, ...), whether the blocks
  are unrolled or one scanned, stacked block."""
  backbone = collection["backbone"]
  if layout.STACKED in backbone:
    return jax.tree.leaves(backbone[layout.STACKED])[0].swapaxes(0, 1)
  blocks = [layout.unrolled_name(i) for i in range(len(backbone))]
  return jnp.stack([jax.tree.leaves(backbone[name])[0] for name in blocks if name in backbone],
                   axis=1)


def attention_log_probs(q, k, mask):
  """log softmax(q k / sqrt(head_dim)) over the keys, (batch, heads, query, key); keys `mask`
  (batch, 1, query, key) hides get a large negative logit, not -inf, so KL terms stay finite."""
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # grouped-query attention's shared keys
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
  return jax.nn.log_softmax(jnp.where(mask, logits, -1e9), axis=-1)


REMAT_POLICIES = {
    "none": None,  # keep every activation for the backward pass
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def transformer_block(cfg: ModelConfig, block: type = None) -> type:
  """`block` (default `TransformerBlock`), wrapped in `nn.remat` with `cfg.remat`'s policy unless
  it is 'none'. Inside `nn.scan` the remat need not stop XLA merging the recomputation with the
  forward pass (`prevent_cse`): the scan's loop boundary already keeps them apart."""
  block = block or TransformerBlock
  if cfg.remat == "none":
    return block
  return nn.remat(block, policy=REMAT_POLICIES[cfg.remat], static_argnums=(4,),
                  prevent_cse=not cfg.scan_layers)


def transformer_blocks(cfg: ModelConfig, x, mask, positions, deterministic: bool, *,
                       pre_norm: bool, decode=None):
  """`cfg.num_layers` blocks applied to `x`, inside the calling module.

  Unrolled, each block is its own submodule (parameters layer_0/, layer_1/, ...), so compile time
  grows with depth. With `cfg.scan_layers` one block is scanned `num_layers` times (`nn.scan`,
  the remat policy inside it): parameters are stacked on a leading axis (layers/, logical axis
  'layers'), dropout gets new random bits per block, and the step compiles one block whatever
  the depth. Both compute the same function of the same weights (`research.models.layout`).
  Prefix tuning's shared MLP (`peft.prefix_projection`) is built here, once for all blocks.
  `decode` (incremental decoding, `research.models.kv_cache`) reaches every block's attention;
  scanned, the blocks' caches are stacked like their parameters.
  """
  prefix_hidden = None
  if cfg.peft.method == "prefix" and cfg.peft.prefix_projection:
    prefix_hidden = prefix_lib.SharedEncoder(cfg, name=prefix_lib.ENCODER)()
  if not cfg.scan_layers:
    for i in range(cfg.num_layers):
      block = transformer_block(cfg)(cfg, pre_norm=pre_norm, name=layout.unrolled_name(i))
      x = block(x, mask, positions, deterministic, prefix_hidden, decode)
    return x
  scanned = nn.scan(
      transformer_block(cfg, ScannedBlock), length=cfg.num_layers,
      variable_axes={"params": 0, kv_cache.COLLECTION: 0, BLOCK_OUTPUTS: 0, ATTENTION: 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * 5, metadata_params={nn.PARTITION_NAME: layout.STACKED})
  x, _ = scanned(cfg, pre_norm=pre_norm, name=layout.STACKED)(x, mask, positions, deterministic,
                                                              prefix_hidden, decode)
  return x


class TransformerBlock(nn.Module):
  """Attention + MLP with residuals; `pre_norm` picks GPT-2/Llama (pre-LN) or BERT (post-LN).

  With `peft.method='adapter'` each sublayer's output passes a bottleneck adapter before the
  residual add (research/peft/adapter.py)."""
  cfg: ModelConfig
  pre_norm: bool

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, prefix_hidden=None, decode=None):
    cfg = self.cfg
    attn_layer, mlp_layer = SelfAttention(cfg, name="attention"), Mlp(cfg, name="mlp")
    attn = lambda h: attn_layer(h, mask, positions, deterministic, prefix_hidden, decode)
    mlp = lambda h: mlp_layer(h, deterministic)
    if cfg.peft.method == "adapter":
      after_attn, after_mlp = (adapter_lib.Adapter(cfg, ACTIVATIONS[cfg.activation], name=name)
                               for name in adapter_lib.NAMES)
      attn = lambda h, sublayer=attn: after_attn(sublayer(h))
      mlp = lambda h, sublayer=mlp: after_mlp(sublayer(h))
    ln1, ln2 = layer_norm(cfg, "ln_attention"), layer_norm(cfg, "ln_mlp")
    if self.pre_norm:
      x = x + attn(ln1(x))
      x = x + mlp(ln2(x))
    else:
      x = ln1(x + attn(x))
      x = ln2(x + mlp(x))
    x = constrain_hidden(x)
    if self.is_mutable_collection(BLOCK_OUTPUTS) and decode is None:  # asked for (distillation)
      self.sow(BLOCK_OUTPUTS, "output", self._distill_projection(x) if cfg.distill_width else x)
    return x

  def _distill_projection(self, x):
    """x -> x W + b, to the teacher's width (`cfg.distill_width`): TinyBERT's learned W_h, one
    per block, read by hidden-state distillation only."""
    return Einsum("btd,de->bte", (self.cfg.hidden_size, self.cfg.distill_width),
                  ("embed", "embed_out"), ("embed_out",), self.cfg, name=DISTILL_PROJECTION)(x)


class ScannedBlock(TransformerBlock):
  """`TransformerBlock` as `nn.scan`'s body: hidden states are the carry, nothing is stacked."""

  def __call__(self, x, mask, positions, deterministic: bool, prefix_hidden=None, decode=None):
    return super().__call__(x, mask, positions, deterministic, prefix_hidden, decode), None
