"""`PeftConfig`: the run's `peft` section as a frozen, hashable dataclass the model holds.

`config.peft.method` picks the method; the fields of the other methods are ignored. Module paths
are '/'-joined names without the parameter, e.g. 'backbone/layer_0/attention/query' (scanned
layout: 'backbone/layers/attention/query'); `targets` are regexes searched in them.
"""
import dataclasses
import re

from research import config_section
from research.errors import UserError

METHODS = ("none", "lora", "adalora", "adapter", "prefix", "prompt", "bitfit", "ia3")

# Parameter-path regexes each method trains; the task heads (`HEADS`) are trained with all of them.
TRAINABLE = {
    "lora": (r"/lora_[ab]$",),
    "adalora": (r"/lora_[aeb]$",),
    "bitfit": (r"bias$",),
    "adapter": (r"/adapter_(attention|mlp)/",),
    "prefix": (r"/prefix(_encoder)?/",),
    "prompt": (r"^prompt/",),
    "ia3": (r"/ia3$",),
}
HEADS = r"^heads_"

# The learning rate a recipe's `peft=METHOD` argument sets (`config_lib.use_peft`).
LEARNING_RATES = {"lora": 2e-3, "adalora": 5e-3, "bitfit": 1e-3, "adapter": 1e-3, "prefix": 1e-2,
                  "prompt": 3e-2, "ia3": 3e-3}

# Targets when `peft.targets` is empty, per method that adapts projections.
DEFAULT_TARGETS = {
    "lora": (r"attention/(query|value)$",),
    "adalora": (r"attention/(query|value)$",),
    "ia3": (r"attention/(key|value)$", r"mlp/down$"),
}


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Every method's settings; see README "Parameter-efficient fine-tuning"."""
  method: str = "none"
  targets: tuple = ()  # module-path regexes (lora, adalora, ia3); () = the method's default
  # LoRA: W x + (alpha / rank) B A dropout(x); rslora: alpha / sqrt(rank) (Kalajdzievski, 2023).
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  rslora: bool = False
  # AdaLoRA (Zhang et al., 2023; research/peft/adalora.py): W x + (alpha / init_rank) Q diag(E)
  # P x, starting at `init_rank` per module; the total rank is cut to `rank` per module on average
  # between steps `adalora_warmup` and steps - `adalora_final`, every `adalora_interval` steps, by
  # importance (EMA of |w * grad| (beta1) times its uncertainty (beta2)); `orth_weight` scales
  # the orthogonality regulariser sum |P^T P - I|^2 + |Q Q^T - I|^2.
  init_rank: int = 12
  adalora_warmup: int = 0
  adalora_final: int = 0
  adalora_interval: int = 1
  beta1: float = 0.85
  beta2: float = 0.85
  orth_weight: float = 0.1  # the paper's gamma (HF PEFT's 0.5 weighs a mean of unsquared norms)
  # Bottleneck adapters (Houlsby et al., 2019) after attention and after the MLP.
  adapter_size: int = 64
  # Prefix tuning (Li & Liang, 2021) and prompt tuning (Lester et al., 2021).
  num_virtual_tokens: int = 20
  prefix_projection: int = 0  # prefix tuning: MLP hidden size reparameterising the prefixes (0: none)

  @property
  def active(self) -> bool:
    return self.method != "none"

  @property
  def learning_rate(self) -> float:
    return LEARNING_RATES[self.method]

  @property
  def trainable_patterns(self) -> tuple:
    """Regexes of the parameters this method trains (() for 'none': all of them)."""
    return TRAINABLE[self.method] + (HEADS,) if self.active else ()

  @property
  def target_patterns(self) -> tuple:
    return tuple(self.targets) or DEFAULT_TARGETS.get(self.method, ())

  @classmethod
  def from_dict(cls, d) -> "PeftConfig":
    return config_section.parse(cls, d, "peft")

  def validate(self):
    if self.method not in METHODS:
      raise UserError(f"peft.method must be one of {list(METHODS)}, got {self.method!r}")
    for field in ("rank", "init_rank", "adapter_size", "num_virtual_tokens", "adalora_interval"):
      if getattr(self, field) < 1:
        raise UserError(f"peft.{field} must be >= 1, got {getattr(self, field)}")
    if not 0 <= self.dropout < 1:
      raise UserError(f"peft.dropout must be in [0, 1), got {self.dropout}")
    if self.method == "adalora" and self.rank > self.init_rank:
      raise UserError(f"peft.rank (the AdaLoRA target, {self.rank}) must be <= peft.init_rank "
                      f"({self.init_rank})")


def is_target(peft: PeftConfig, module_path: str) -> bool:
  """Whether a projection at `module_path` is one `peft`'s method adapts."""
  return any(re.search(p, module_path) for p in peft.target_patterns)
