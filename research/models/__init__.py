"""Models: `build(model_cfg)` returns the linen `Transformer` described by a config's `model`."""
from research.models.config import SIZES, ModelConfig
from research.models.transformer import Transformer


def build(model_cfg) -> Transformer:
  """Builds the model from a `ModelConfig`, a ConfigDict `model` section, or a dict."""
  if not isinstance(model_cfg, ModelConfig):
    model_cfg = ModelConfig.from_dict(model_cfg)
  return Transformer(model_cfg)


__all__ = ["build", "ModelConfig", "SIZES", "Transformer"]
