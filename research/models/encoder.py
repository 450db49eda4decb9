"""BERT/RoBERTa-style encoder: learned positions, token types, post-LN blocks, optional pooler."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig
from research.models.dropout import Dropout


class Encoder(nn.Module):
  """Bidirectional encoder over already-embedded tokens.

  Returns {'hidden': (batch, length, hidden)} and, with `cfg.pooler`, 'pooled' (batch, hidden):
  the tanh-projected first ([CLS]) token, as in BERT.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, token_embeddings, attention_mask, token_type_ids, segment_ids, positions,
               deterministic: bool, decode=None):
    if decode is not None:
      raise ValueError("incremental decoding needs a causal decoder, not an encoder")
    cfg = self.cfg
    embed = lambda n, name: nn.Embed(
        n, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
        embedding_init=layers.normal_init((None, "embed")), name=name)
    x = token_embeddings + embed(cfg.max_len, "position_embed")(positions)
    if cfg.type_vocab_size:
      x = x + embed(cfg.type_vocab_size, "type_embed")(token_type_ids)
    x = layers.layer_norm(cfg, "ln_embed")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain_hidden(x)
    mask = layers.AttentionMask(attention_mask, segment_ids, causal=False)
    x = layers.transformer_blocks(cfg, x, mask, positions, deterministic, pre_norm=False)
    outputs = {"hidden": x}
    if cfg.pooler:
      pooled = layers.Einsum("bd,de->be", (cfg.hidden_size, cfg.hidden_size),
                             ("embed", "embed_out"), ("embed_out",), cfg,
                             name="pooler")(x[:, 0], deterministic)
      outputs["pooled"] = jnp.tanh(pooled)
    return outputs
