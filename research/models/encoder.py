"""BERT-style encoder: learned positions, token types, post-LN blocks, GELU, tanh pooler."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class Encoder(nn.Module):
  """Bidirectional encoder over already-embedded tokens.

  Returns {'hidden': (batch, length, hidden), 'pooled': (batch, hidden)}; `pooled` is the
  tanh-projected first ([CLS]) token, as in BERT.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, token_embeddings, attention_mask, token_type_ids, segment_ids, positions,
               deterministic: bool):
    cfg = self.cfg
    x = token_embeddings + nn.Embed(
        cfg.max_len, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
        embedding_init=layers.normal_init((None, "embed")), name="position_embed")(positions)
    if cfg.type_vocab_size:
      x = x + nn.Embed(
          cfg.type_vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
          param_dtype=cfg.param_dtype, embedding_init=layers.normal_init((None, "embed")),
          name="type_embed")(token_type_ids)
    x = layers.layer_norm(cfg, "ln_embed")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain_hidden(x)
    mask = layers.attention_mask(attention_mask, segment_ids, causal=False)
    for i in range(cfg.num_layers):
      x = layers.TransformerBlock(cfg, pre_norm=False, name=f"layer_{i}")(x, mask, deterministic)
    pooled = nn.Dense(
        cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
        kernel_init=layers.normal_init(("embed", "embed_out")),
        bias_init=layers.zeros_init(("embed_out",)), name="pooler")(x[:, 0])
    return {"hidden": x, "pooled": jnp.tanh(pooled)}
