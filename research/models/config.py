"""`ModelConfig`: the typed, hashable description of a Transformer, and the named sizes.

Configs describe a model as an `ml_collections.ConfigDict` (the `model` section); `from_dict`
turns that into this frozen dataclass so modules can hold it and `jax.jit` can hash it.
"""
import dataclasses
from typing import Optional

import jax.numpy as jnp

from research import config_section
from research.errors import UserError
from research.models import quantization
from research.models import tpu_attention
from research.peft.config import PeftConfig

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
HEADS = ("mlm", "sentence_pair", "lm", "classification", "token_classification", "span")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """One entry of `ModelConfig.heads`: 'kind', or 'name=kind' / 'name=kind:num_labels'.

  The name keys the parameters (heads_<name>/) and outputs (<name>_logits, ...); several heads of
  one kind (multi-task fine-tuning) need distinct names. num_labels defaults to the config's.
  """
  name: str
  kind: str
  num_labels: int

  @classmethod
  def parse(cls, spec: str, default_labels: int) -> "HeadSpec":
    name, _, rest = spec.rpartition("=")
    kind, _, labels = rest.partition(":")
    try:
      return cls(name or kind, kind, int(labels) if labels else default_labels)
    except ValueError:
      raise UserError(f"bad head spec {spec!r}: expected 'kind', 'name=kind' or "
                      "'name=kind:num_labels'") from None
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's parameters and its computation."""
  kind: str = "encoder"  # 'encoder' (bidirectional) or 'decoder' (causal)
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int = 0  # grouped-query attention (Llama); 0 = num_heads
  attention_head_dim: int = 0  # 0 = hidden_size // num_heads
  mlp_dim: int = 3072
  max_len: int = 512  # learned position embeddings (unused with rotary)
  type_vocab_size: int = 2  # token types (segments A/B); 0 for none
  dropout_rate: float = 0.1  # on embeddings, attention output and MLP output
  norm: str = "layernorm"  # 'layernorm' or 'rmsnorm' (Llama)
  layer_norm_eps: float = 1e-12
  activation: str = "gelu"  # 'gelu' (exact, BERT), 'gelu_tanh' (GPT-2), 'relu', 'silu'
  gated_mlp: bool = False  # SwiGLU-style: down(act(gate(x)) * up(x)) (Llama)
  use_bias: bool = True  # biases in attention and MLP projections (Llama has none)
  position_embedding: str = "learned"  # 'learned' (BERT, GPT-2) or 'rotary' (Llama)
  rope_theta: float = 10000.0
  position_offset: int = 0  # RoBERTa: positions count real tokens from padding_idx + 1
  pooler: bool = True  # encoder: tanh-dense on the first token ('pooled')
  num_labels: int = 2  # the classification head's outputs
  classifier: str = "pooled"  # classification head: 'pooled' (BERT) or 'first_token_mlp' (RoBERTa)
  dtype: str = "bfloat16"  # compute dtype
  param_dtype: str = "float32"
  heads: tuple = ()  # HeadSpec strings: a kind from HEADS, or 'name=kind[:num_labels]'
  tie_embeddings: bool = True  # vocabulary projections reuse the token embedding matrix
  # None: cuDNN on GPU with 16-bit compute, else XLA; 'pallas_flash': Pallas's TPU flash attention
  attention_impl: Optional[str] = None
  remat: str = "none"  # recompute block activations in the backward pass: 'none', 'full', 'dots'
  scan_layers: bool = False  # one nn.scan over the blocks (parameters stacked on a 'layers' axis)
  # Projections (every `layers.Einsum`): 'none', 'int8_weights', 'int8' (weights and
  # activations; inference only: `python -m research.compress --method=quantize` writes them), or
  # 'qat' (fake-quantized int8 weights in training); see research/models/quantization.py.
  quantization: str = "none"
  # Hidden-state distillation from a teacher of another width (research/compress/distill.py sets
  # it): each block's sown output passes a learned projection to this width (0: none). Training
  # only: inference never applies it.
  distill_width: int = 0
  peft: PeftConfig = PeftConfig()  # the run's `peft` section (research/peft): adapter parameters

  @property
  def head_dim(self) -> int:
    return self.attention_head_dim or self.hidden_size // self.num_heads

  @property
  def head_specs(self) -> tuple:
    return tuple(HeadSpec.parse(h, self.num_labels) for h in self.heads)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def of_run(cls, config) -> "ModelConfig":
    """The model of a run's whole config (its `model` and `peft` sections)."""
    return cls.from_dict(config["model"], config.get("peft"))

  @classmethod
  def from_dict(cls, d, peft=None) -> "ModelConfig":
    """Builds from a ConfigDict or dict (a config's `model` section) and, optionally, its `peft`
    section; unknown keys and bad values raise `UserError`."""
    d = config_section.as_dict(d)
    given = d.pop("peft", None)  # a dict of `dataclasses.asdict(model_cfg)`
    peft = peft if peft is not None else given
    return dataclasses.replace(config_section.parse(cls, d, "model"),
                               peft=peft if isinstance(peft, PeftConfig)
                               else PeftConfig.from_dict(peft))

  def validate(self):
    if self.kind not in KINDS:
      raise UserError(f"model.kind must be one of {KINDS}, got {self.kind!r}")
    if not self.attention_head_dim and self.hidden_size % self.num_heads:
      raise UserError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                      f"model.num_heads ({self.num_heads})")
    if self.num_heads % self.kv_heads:
      raise UserError(f"model.num_heads ({self.num_heads}) must be a multiple of "
                      f"model.num_kv_heads ({self.kv_heads})")
    choices = {"norm": ("layernorm", "rmsnorm"), "activation": ACTIVATIONS,
               "position_embedding": ("learned", "rotary"),
               "classifier": ("pooled", "first_token_mlp"), "remat": ("none", "full", "dots"),
               "attention_impl": (None, "", "xla", "cudnn", tpu_attention.IMPL),
               "quantization": quantization.MODES}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise UserError(f"model.{field} must be one of {allowed}, got {getattr(self, field)!r}")
    if "classification" in self.heads and self.classifier == "pooled" and not self.pooler:
      raise UserError("the 'pooled' classification head needs model.pooler=True")
    specs = self.head_specs
    bad = [s.kind for s in specs if s.kind not in HEADS]
    if bad:
      raise UserError(f"unknown model heads {bad}; known: {list(HEADS)}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
      raise UserError(f"model heads need distinct names, got {names}")
    for field in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, field))
      except TypeError:
        raise UserError(f"model.{field} {getattr(self, field)!r} is not a dtype") from None
