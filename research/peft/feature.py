"""PEFT as a training feature (research/train/feature.py): on when `peft.method` is not 'none'.

The model builds the method's parameters from `ModelConfig.peft` (research/peft/config.py); the
feature trains them and the task heads only, refuses targets this model lacks before the run
writes anything (research/peft/targets.py) and, for AdaLoRA, adds the rank budget to the
optimizer, the orthogonality regulariser to the loss and the ranks kept to the summary
(research/peft/adalora.py).
"""
import dataclasses

from research.peft import adalora, targets
from research.peft.config import PeftConfig
from research.train.feature import Feature, ResolvedModel


@dataclasses.dataclass(frozen=True)
class Peft(Feature):
  name = "peft"
  settings: PeftConfig
  total_steps: int  # train.steps: AdaLoRA's budget schedule runs over them

  @classmethod
  def section(cls) -> dict:
    return dataclasses.asdict(PeftConfig())

  @classmethod
  def of_run(cls, config) -> "Peft | None":
    settings = PeftConfig.from_dict(config.get("peft"))
    return cls(settings, int(config.train.steps)) if settings.active else None

  @property
  def trainable_patterns(self) -> tuple:
    return self.settings.trainable_patterns

  @property
  def regularizers(self) -> tuple:
    return adalora.regularizers(self.settings)

  def check(self, model: ResolvedModel):
    targets.check_architecture(model.model_cfg, model.config.data.seq_len)
    targets.check(model.model_cfg, model.param_shapes)

  def optimizer(self, tx):
    if self.settings.method != "adalora":
      return tx
    return adalora.rank_allocation(tx, self.settings, self.total_steps)

  def finish(self, params, state, workdir: str, evaluate) -> dict:
    if self.settings.method != "adalora":
      return {}
    return adalora.report(params, self.settings)  # the ranks the final parameters kept
