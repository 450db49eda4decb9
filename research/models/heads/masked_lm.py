"""BERT's masked-LM head, evaluated only at the masked positions."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class MaskedLmHead(nn.Module):
  """dense -> GELU -> LayerNorm -> vocabulary projection (tied to the token embedding) + bias.

  Gathers the hidden states at `masked_positions` (batch, max_predictions) first, so the
  vocabulary projection costs max_predictions rather than length rows per sequence.
  Adds 'mlm_logits' (batch, max_predictions, vocab) in float32.
  """
  cfg: ModelConfig
  key: str  # output key prefix
  token_embed: nn.Embed
  uses_token_embedding = True

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    if masked_positions is None:
      return {}
    cfg = self.cfg
    x = jnp.take_along_axis(outputs["hidden"], masked_positions[..., None], axis=1)
    x = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                 kernel_init=layers.normal_init(("embed", "embed_out")),
                 bias_init=layers.zeros_init(("embed_out",)), name="transform")(x)
    x = layers.ACTIVATIONS[cfg.activation](x)
    x = layers.layer_norm(cfg, "ln")(x)
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                        param_dtype=cfg.param_dtype, kernel_init=layers.normal_init(("embed", "vocab")),
                        name="decoder")(x)
    bias = self.param("bias", layers.zeros_init(("vocab",)), (cfg.vocab_size,), cfg.param_dtype)
    return {f"{self.key}_logits": logits.astype(jnp.float32) + bias}
