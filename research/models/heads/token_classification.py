"""Token classification (NER): one label distribution per token."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig
from research.models.dropout import Dropout


class TokenClassificationHead(nn.Module):
  """dropout -> dense on every hidden state; adds '<key>_logits' (batch, length, num_labels)."""
  cfg: ModelConfig
  key: str
  num_labels: int = 2
  uses_token_embedding = False

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    cfg = self.cfg
    x = Dropout(cfg.dropout_rate)(outputs["hidden"], deterministic=deterministic)
    logits = layers.output_dense(cfg, self.num_labels, "out")(x)
    return {f"{self.key}_logits": logits.astype(jnp.float32)}
