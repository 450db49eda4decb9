"""Token classification (NER): one label distribution per token."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class TokenClassificationHead(nn.Module):
  """dropout -> dense on every hidden state; adds '<key>_logits' (batch, length, num_labels)."""
  cfg: ModelConfig
  key: str
  num_labels: int = 2
  uses_token_embedding = False

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    cfg = self.cfg
    x = nn.Dropout(cfg.dropout_rate)(outputs["hidden"], deterministic=deterministic)
    logits = nn.Dense(self.num_labels, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                      kernel_init=layers.normal_init(("embed_out", None)),
                      bias_init=layers.zeros_init((None,)), name="out")(x)
    return {f"{self.key}_logits": logits.astype(jnp.float32)}
