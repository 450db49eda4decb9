"""The training features a run can turn on: one registration line each.

A training feature is a `research.train.feature.Feature` subclass in its own module (its config
section, its settings, its hooks). Listing it here adds it to every run: `research.train.run`
(and so research.main, the continual runner and the distillation command) hands these to the
trainer, which calls the hooks of the ones a config turns on and names none of them. The order
is the order the hooks run in where they compose: optimizer wrappers nest in this order (AdaLoRA's
rank budget inside pruning inside the EMA, which averages the weights the others leave).
"""
from research.compress.distill import Distill
from research.compress.magnitude import Prune
from research.continual.penalty import ContinualPenalty
from research.ema import Ema
from research.peft.feature import Peft
from research.train import feature as feature_lib

REGISTRY = (
    Peft,  # parameter-efficient fine-tuning: config.peft (research/peft)
    Prune,  # magnitude pruning while training: config.prune
    Distill,  # knowledge distillation from a teacher: config.distill
    ContinualPenalty,  # EWC / L2-SP in a continual run's later stages: config.continual
    Ema,  # an exponential moving average of the weights: config.ema
)


def of_config(config) -> tuple:
  """The registered features `config` turns on (for commands that size a run without training
  it: research.cost, research.memory)."""
  return feature_lib.enabled(REGISTRY, config)
