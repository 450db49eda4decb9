"""Pallas flash attention for TPUs: `model.attention_impl='pallas_flash'` (opt-in).

Runs jax's Pallas TPU kernel `jax.experimental.pallas.ops.tpu.flash_attention` (the scores stay
in VMEM, tile by tile; nothing of size (query, key) goes to HBM, forward or backward: the kernel
has its own VJP) for our model's attention, and gives what `attention.xla_attention` gives on
every real query, to float round-off (tests/test_tpu_attention.py):
  - layout: our (batch, length, heads, head_dim) goes in as the kernel's (batch, heads, length,
    head_dim) and comes back;
  - scale: `sm_scale` = 1/sqrt(head_dim);
  - masks: the causal flag is the kernel's `causal`; padding and packed documents become the
    kernel's segment ids: 0 on padding, s + 1 on a real token of segment s, so a real query never
    sees a padding key or another document. A padding query sees the padding keys (in our XLA form
    its row is fully masked): its output differs and is never used (no loss reads it);
  - grouped-query attention: the kernel wants as many key/value heads as query heads, so each
    key/value head is repeated over its group (query head h reads key/value head h // group, as in
    `attention.xla_attention`);
  - blocks: 512 (else 256, 128) query and key rows per tile, forward and backward; the sequence
    length must be a multiple of 128 (the kernel's smallest block), else a one-line `UserError`.
    The head size must be at most 128 or a multiple of 128 (the kernel's).
Where it runs: on a TPU (the platform of the mesh set by `jax.set_mesh`, else jax's default
backend) the kernel compiles with Mosaic, also for a compile-only TPU slice (`research.aot`); on
any other platform it runs in Pallas's interpreter (`interpret=True`, forced on the kernel's
calls with `pltpu.force_tpu_interpret_mode`, forward and backward): the same kernel as plain XLA
ops looping over its grid, slowly: for tests only.
Under a mesh the kernel runs per device under `jax.shard_map` (XLA does not partition a Pallas
call): the batch split as `act_batch`, the heads as `heads` (the config's sharding rules).
What the kernel cannot express is not sent to it: a dense mask (prefix tuning's prefixes, the
KV-cache decode step of generation) falls back to our XLA form (`layers.SelfAttention`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from research import compile_options
from research.errors import UserError

IMPL = "pallas_flash"  # the `model.attention_impl` value
MIN_BLOCK = 128  # the kernel's smallest tile (its lanes)
BLOCKS = (512, 256, 128)
# Off a TPU: Pallas's generic interpreter (`interpret=True`: the kernel as plain XLA ops, a loop
# over the grid), not the TPU interpret mode's simulator (`pltpu.InterpretParams`), whose threads
# and callbacks stalled our tests now and then.
HLO_INTERPRETER = True


def mask_kwargs(padding, segment_ids, causal: bool) -> dict:
  """`flash_attention`'s mask arguments for `layers.AttentionMask`'s fields."""
  if padding is None and segment_ids is None:
    return {"segment_ids": None, "is_causal": causal}
  ids = jnp.ones(padding.shape, jnp.int32) if segment_ids is None else segment_ids + 1
  if padding is not None:
    ids = jnp.where(padding.astype(bool), ids, 0)
  return {"segment_ids": ids.astype(jnp.int32), "is_causal": causal}


def block_size(length: int) -> int:
  if length % MIN_BLOCK:
    raise UserError(f"model.attention_impl={IMPL!r} needs a sequence length that is a multiple "
                    f"of {MIN_BLOCK} (the Pallas kernel's smallest block), got {length}; set "
                    "data.seq_len, or model.attention_impl=xla")
  return next(b for b in BLOCKS if length % b == 0)


def flash_attention(q, k, v, segment_ids=None, is_causal: bool = False):
  """(batch, query, heads, head_dim) in q's dtype; k, v (batch, key, kv_heads, head_dim);
  `segment_ids` (batch, length) int32 (0: padding) or None (module doc)."""
  batch, length, heads, head_dim = q.shape
  if k.shape[1] != length:
    raise UserError(f"model.attention_impl={IMPL!r} takes self-attention only (query length "
                    f"{length}, key length {k.shape[1]}); set model.attention_impl=xla")
  if head_dim > MIN_BLOCK and head_dim % MIN_BLOCK:
    raise UserError(f"model.attention_impl={IMPL!r} needs a head size of at most {MIN_BLOCK} or "
                    f"a multiple of it, got {head_dim}; set model.attention_impl=xla")
  group = heads // k.shape[2]
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # (batch, heads, length, head_dim)
  if group > 1:
    k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
  kernel = _kernel(block_size(length), is_causal, float(1.0 / np.sqrt(head_dim)),
                   interpret=compile_options.target_platform() != "tpu")
  args = (q, k, v) if segment_ids is None else (q, k, v, segment_ids)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    spec = nn.logical_to_mesh_axes(("act_batch", "heads", None, None))
    specs = (spec,) * 3 + ((jax.P(spec[0], None),) if segment_ids is not None else ())
    kernel = jax.shard_map(kernel, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)
  return kernel(*args).transpose(0, 2, 1, 3)


def _kernel(block: int, causal: bool, sm_scale: float, interpret: bool):
  """f(q, k, v[, segment_ids]) -> out, all (batch, heads, length, head_dim): the Pallas kernel,
  compiled for a TPU or (`interpret`) simulated, forward and backward."""
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  sizes = fa.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                        block_q_dkv=block, block_k_major_dq=block, block_k_dq=block,
                        block_q_dq=block)

  def call(q, k, v, segment_ids=None):
    ids = None if segment_ids is None else fa.SegmentIds(q=segment_ids, kv=segment_ids)
    return fa.flash_attention(q, k, v, segment_ids=ids, causal=causal, sm_scale=sm_scale,
                              block_sizes=sizes)
  return _interpreted(call) if interpret else call


def _interpreted(call):
  """`call` in Pallas's interpreter, its backward too: the kernel's VJP traces its
  backward kernels when the gradient is taken, after the forward's trace has returned, so the
  interpret-mode context is entered again there (the forward's pullback is the residual)."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top

  @jax.custom_vjp
  def interpreted(q, k, v, *ids):
    with pltpu.force_tpu_interpret_mode(HLO_INTERPRETER):
      return call(q, k, v, *ids)

  def forward(q, k, v, *ids):
    with pltpu.force_tpu_interpret_mode(HLO_INTERPRETER):
      out, pullback = jax.vjp(lambda q, k, v: call(q, k, v, *ids), q, k, v)
    return out, (pullback, ids)

  def backward(residuals, g):
    pullback, ids = residuals
    with pltpu.force_tpu_interpret_mode(HLO_INTERPRETER):
      return (*pullback(g), *(None for _ in ids))

  interpreted.defvjp(forward, backward)
  return interpreted
