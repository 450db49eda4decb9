"""`ModelConfig`: the typed, hashable description of a Transformer, and the named sizes.

Configs describe a model as an `ml_collections.ConfigDict` (the `model` section); `from_dict`
turns that into this frozen dataclass so modules can hold it and `jax.jit` can hash it.
"""
import dataclasses
from typing import Optional

import jax.numpy as jnp

from research.errors import UserError

# (num_layers, hidden_size, num_heads). tiny..small are the BERT miniatures of Turc et al. (2019);
# base and large are the BERT paper's shapes, which are also GPT-2 small (124M) and medium (355M).
SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}

KINDS = ("encoder", "decoder")
HEADS = ("mlm", "sentence_pair", "lm")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's parameters and its computation."""
  kind: str = "encoder"  # 'encoder' (BERT: post-LN, bidirectional) or 'decoder' (GPT-2: pre-LN, causal)
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512  # learned position embeddings
  type_vocab_size: int = 2  # token types (segments A/B); 0 for none
  dropout_rate: float = 0.1  # on embeddings, attention output and MLP output
  layer_norm_eps: float = 1e-12
  activation: str = "gelu"  # 'gelu' (exact, BERT) or 'gelu_tanh' (GPT-2)
  dtype: str = "bfloat16"  # compute dtype
  param_dtype: str = "float32"
  heads: tuple = ()  # any of HEADS
  tie_embeddings: bool = True  # vocabulary projections reuse the token embedding matrix
  attention_impl: Optional[str] = None  # None picks per platform; 'xla' or 'cudnn' forces one

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_dict(cls, d) -> "ModelConfig":
    """Builds from a ConfigDict or dict; unknown keys and bad values raise `UserError`."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise UserError(f"unknown model config keys {unknown}; known: {sorted(names)}")
    if "heads" in d:
      d["heads"] = tuple(d["heads"])
    cfg = cls(**d)
    cfg.validate()
    return cfg

  def validate(self):
    if self.kind not in KINDS:
      raise UserError(f"model.kind must be one of {KINDS}, got {self.kind!r}")
    if self.hidden_size % self.num_heads:
      raise UserError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                      f"model.num_heads ({self.num_heads})")
    bad = [h for h in self.heads if h not in HEADS]
    if bad:
      raise UserError(f"unknown model heads {bad}; known: {list(HEADS)}")
    if self.activation not in ("gelu", "gelu_tanh"):
      raise UserError(f"model.activation must be 'gelu' or 'gelu_tanh', got {self.activation!r}")
    for field in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, field))
      except TypeError:
        raise UserError(f"model.{field} {getattr(self, field)!r} is not a dtype") from None
