"""Causal-LM head: next-token logits at every position (tied or untied projection)."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class CausalLmHead(nn.Module):
  """Adds 'lm_logits' (batch, length, vocab) in float32; GPT-2 ties it to the token embedding."""
  cfg: ModelConfig
  key: str  # output key prefix
  token_embed: nn.Embed
  uses_token_embedding = True

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    cfg = self.cfg
    x = outputs["hidden"]
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                        param_dtype=cfg.param_dtype, kernel_init=layers.normal_init(("embed", "vocab")),
                        name="decoder")(x)
    return {f"{self.key}_logits": logits.astype(jnp.float32)}
