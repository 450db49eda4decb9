"""Sequence classification (or regression, with num_labels=1) from the first token."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig


class ClassificationHead(nn.Module):
  """Adds 'classification_logits' (batch, num_labels) in float32.

  `cfg.classifier`: 'pooled' = dropout -> dense on the pooler output (BERT);
  'first_token_mlp' = dropout -> dense -> tanh -> dropout -> dense on the first token (RoBERTa).
  """
  cfg: ModelConfig
  key: str  # output key prefix
  num_labels: int = 2
  uses_token_embedding = False

  @nn.compact
  def __call__(self, outputs, masked_positions=None, deterministic=True):
    cfg = self.cfg
    dense = lambda n, name, out_axis: nn.Dense(
        n, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
        kernel_init=layers.normal_init(("embed_out", out_axis)),
        bias_init=layers.zeros_init((out_axis,)), name=name)
    dropout = nn.Dropout(cfg.dropout_rate)
    if cfg.classifier == "pooled":
      x = dropout(outputs["pooled"], deterministic=deterministic)
    else:
      x = dropout(outputs["hidden"][:, 0], deterministic=deterministic)
      x = jnp.tanh(dense(cfg.hidden_size, "dense", "embed_out")(x))
      x = dropout(x, deterministic=deterministic)
    return {f"{self.key}_logits": dense(self.num_labels, "out", None)(x).astype(jnp.float32)}
