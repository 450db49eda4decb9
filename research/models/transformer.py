"""`Transformer`: token embedding + backbone (encoder or decoder) + the configured heads."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import heads as heads_lib
from research.models import layers
from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder import Encoder
from research.peft.prompt import SoftPrompt


def default_positions(cfg: ModelConfig, input_ids, attention_mask, segment_ids):
  """0, 1, 2, ...; restarting per packed segment; RoBERTa: real tokens from `position_offset`."""
  if segment_ids is not None:
    return layers.positions_from_segments(segment_ids)
  if cfg.position_offset:  # RoBERTa counts real tokens only; padding sits at offset - 1
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + cfg.position_offset - 1
  return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)


class Transformer(nn.Module):
  """The one model class; `cfg.kind` picks the backbone and `cfg.heads` the heads.

  apply({'params': p}, input_ids, attention_mask=None, token_type_ids=None, deterministic=True)
  returns a dict with 'hidden' (batch, length, hidden) plus each head's keys ('pooled',
  'mlm_logits', 'sentence_pair_logits', 'lm_logits', 'classification_logits'). attention_mask
  None means no padding, so attention gets no mask to read. With prompt tuning
  (research/peft/prompt.py) 'hidden' holds the real tokens only and 'prompt_hidden' the virtual
  ones, which come first ('pooled' reads the first of them). The token
  embedding lives here so heads can tie their vocabulary projection to it. Parameters:
  token_embed/, backbone/, heads_<name>/.

  Incremental decoding (decoder only; `research.generate`): with `decode`, a
  `research.models.kv_cache.DecodeStep`, the call reads and writes the 'cache' collection,
  `positions` must be given (they count real tokens), and the heads see the last position only
  (the next token's logits). A soft prompt is prepended by the prefill call and occupies the
  cache's first `num_virtual_tokens` slots; later calls' positions shift past it.
  """
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.token_embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
        embedding_init=layers.normal_init(("vocab", "embed")))
    backbone = Encoder if cfg.kind == "encoder" else Decoder
    self.backbone = backbone(cfg)
    self.heads = {spec.name: heads_lib.build(spec, cfg, self.token_embed)
                  for spec in cfg.head_specs}
    if cfg.peft.method == "prompt":
      self.prompt = SoftPrompt(cfg, self.token_embed)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, segment_ids=None,
               positions=None, masked_positions=None, deterministic: bool = True, decode=None):
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = default_positions(
          self.cfg, input_ids,
          jnp.ones_like(input_ids) if attention_mask is None else attention_mask, segment_ids)
    embeddings = self.token_embed(input_ids)
    prompted = self.cfg.peft.method == "prompt" and (decode is None or decode.prefill)
    if prompted:
      if segment_ids is not None:
        raise ValueError("prompt tuning takes unpacked rows (no segment_ids)")
      embeddings, attention_mask, token_type_ids, positions = self.prompt(
          embeddings, attention_mask, token_type_ids, positions)
    elif self.cfg.peft.method == "prompt":  # a decoding step after the soft prompt's prefill
      positions = positions + self.cfg.peft.num_virtual_tokens
    outputs = self.backbone(embeddings, attention_mask, token_type_ids, segment_ids, positions,
                            deterministic, decode)
    if prompted:  # per-token heads read the real tokens only
      n = self.cfg.peft.num_virtual_tokens
      outputs.update(hidden=outputs["hidden"][:, n:], prompt_hidden=outputs["hidden"][:, :n])
    if decode is not None:
      outputs["hidden"] = outputs["hidden"][:, -1:]
    for head in self.heads.values():
      outputs.update(head(outputs, masked_positions=masked_positions, deterministic=deterministic))
    return outputs
