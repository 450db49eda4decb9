"""Causal decoder: GPT-2 (learned positions, LayerNorm, GELU) or Llama-style (rotary, RMSNorm,
SwiGLU, grouped-query attention), pre-norm blocks and a final norm either way."""
import flax.linen as nn

from research.models import layers
from research.models.config import ModelConfig
from research.models.dropout import Dropout


class Decoder(nn.Module):
  """Causal decoder over already-embedded tokens; returns {'hidden': (batch, length, hidden)}.

  With `segment_ids`, packed documents do not attend to each other and `positions` restart at
  each document (see `research.models.layers.positions_from_segments`). With `decode` (a
  `research.models.kv_cache.DecodeStep`) the call is one step of incremental decoding: it
  attends to the key/value cache instead of `attention_mask`.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, token_embeddings, attention_mask, token_type_ids, segment_ids, positions,
               deterministic: bool, decode=None):
    del token_type_ids  # decoders have none
    cfg = self.cfg
    x = token_embeddings
    if cfg.position_embedding == "learned":
      x = x + nn.Embed(
          cfg.max_len, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
          embedding_init=layers.normal_init((None, "embed")), name="position_embed")(positions)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain_hidden(x)
    if decode is None:
      mask = layers.AttentionMask(attention_mask, segment_ids, causal=True)
    else:
      mask = decode.mask(x.shape[1])
    x = layers.transformer_blocks(cfg, x, mask, positions, deterministic, pre_norm=True,
                                  decode=decode)
    return {"hidden": layers.layer_norm(cfg, "ln_final")(x)}
