"""Sequence classification (or regression, with num_labels=1) from the first token."""
import flax.linen as nn
import jax.numpy as jnp

from research.models import layers
from research.models.config import ModelConfig
from research.models.dropout import Dropout


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
    dropout = Dropout(cfg.dropout_rate)
    if cfg.classifier == "pooled":
      x = dropout(outputs["pooled"], deterministic=deterministic)
    else:
      first = outputs.get("prompt_hidden", outputs["hidden"])  # a soft prompt comes first
      x = dropout(first[:, 0], deterministic=deterministic)
      x = jnp.tanh(layers.output_dense(cfg, cfg.hidden_size, "dense", "embed_out",
                                         in_axis="embed")(x))
      x = dropout(x, deterministic=deterministic)
    logits = layers.output_dense(cfg, self.num_labels, "out")(x)
    return {f"{self.key}_logits": logits.astype(jnp.float32)}
