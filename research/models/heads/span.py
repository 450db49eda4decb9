"""Extractive QA: start and end logits over the tokens (BERT's qa_outputs)."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class SpanHead(nn.Module):
  """dense to 2 on every hidden state; adds '<key>_start_logits', '<key>_end_logits' (batch, length)."""
  cfg: ModelConfig
  key: str
  num_labels: int = 2
  uses_token_embedding = False

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    logits = layers.output_dense(self.cfg, 2, "out")(outputs["hidden"]).astype(jnp.float32)
    return {f"{self.key}_start_logits": logits[..., 0], f"{self.key}_end_logits": logits[..., 1]}
