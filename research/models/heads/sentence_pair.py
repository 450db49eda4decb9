"""Two-way classifier on the pooled [CLS] output: next-sentence (NSP) or sentence-order (SOP)."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class SentencePairHead(nn.Module):
  """Adds 'sentence_pair_logits' (batch, 2) in float32; label 0 = in order / is next."""
  cfg: ModelConfig
  key: str  # output key prefix
  num_labels: int = 2
  uses_token_embedding = False

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    logits = layers.output_dense(self.cfg, 2, "classifier")(outputs["pooled"])
    return {f"{self.key}_logits": logits.astype(jnp.float32)}
