"""`Transformer`: token embedding + backbone (encoder or decoder) + the configured heads."""
import flax.linen as nn
import jax.numpy as jnp

from research import heads as heads_lib
from research.models import layers
from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder import Encoder


class Transformer(nn.Module):
  """The one model class; `cfg.kind` picks the backbone and `cfg.heads` the heads.

  apply({'params': p}, input_ids, attention_mask=None, token_type_ids=None, deterministic=True)
  returns a dict with 'hidden' (batch, length, hidden) plus each head's keys ('pooled',
  'mlm_logits', 'sentence_pair_logits', 'lm_logits'). The token embedding lives here so heads can
  tie their vocabulary projection to it.
  """
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.token_embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
        embedding_init=layers.normal_init(("vocab", "embed")))
    backbone = Encoder if cfg.kind == "encoder" else Decoder
    self.backbone = backbone(cfg)
    self.heads = [heads_lib.build(name, cfg, self.token_embed) for name in cfg.heads]

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, segment_ids=None,
               positions=None, masked_positions=None, deterministic: bool = True):
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = (layers.positions_from_segments(segment_ids) if segment_ids is not None
                   else jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape))
    outputs = self.backbone(self.token_embed(input_ids), attention_mask, token_type_ids,
                            segment_ids, positions, deterministic)
    for head in self.heads:
      outputs.update(head(outputs, masked_positions=masked_positions, deterministic=deterministic))
    return outputs
