"""`config.continual`: the stages of a continual-learning run and the method, checked in one place.

  stages     stages joined by '+', each a task of `config.tasks` optionally restricted to some of
             its classes, '/'-separated: 'bbc_news:business/entertainment+bbc_news:politics/sports'
  scenario   'task': every stage is its own task with its own head (task-incremental: the task
             id is known at test time); 'class': the stages split one task's classes and share
             one head over all of them, whose classes not seen yet are masked out of the loss
             and the predictions (class-incremental: no task id at test time)
  method     'naive' (sequential fine-tuning), 'ewc', 'l2sp', 'replay' or 'lora' (a LoRA per task
             over the frozen base, `config.peft.lora`; task-incremental only)
  ewc        strength (lambda), decay (online EWC's gamma: 1 keeps every stage's Fisher fully,
             0 only the last), fisher_examples (training examples the diagonal Fisher averages)
  l2sp       strength (alpha): a pull towards the weights the run started from (`init.weights`)
  replay     size (examples the reservoir keeps), ratio (share of each batch drawn from it)
  reference  '/'-separated accuracy per stage of a reference model (e.g. each task trained
             alone): forward transfer is reported against it ('' = not reported)
  split      the split the accuracy matrix is measured on ('test', or 'eval')
`config.train.steps` is the length of each stage. Every bad value is one `UserError` line.
"""
import dataclasses
import math

from research.errors import UserError

METHODS = ("naive", "ewc", "l2sp", "replay", "lora")
SCENARIOS = ("task", "class")


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int  # 0-based position in the sequence
  source: str  # the task of `config.tasks` it reads
  classes: tuple  # the classes it keeps (() = all of them)

  @property
  def name(self) -> str:
    """Its task name in metrics and heads: the source, then its classes."""
    return "_".join((self.source,) + self.classes)

  @property
  def folder(self) -> str:
    return f"stage{self.index + 1}_{self.name}"


@dataclasses.dataclass(frozen=True)
class ContinualConfig:
  stages: tuple
  scenario: str
  method: str
  ewc_strength: float = 0.0
  ewc_decay: float = 1.0
  fisher_examples: int = 256
  l2sp_strength: float = 0.0
  replay_size: int = 0
  replay_ratio: float = 0.0
  reference: tuple = ()
  split: str = "test"

  @classmethod
  def of_run(cls, config) -> "ContinualConfig":
    c = config.continual
    settings = cls(parse_stages(c.stages), c.scenario, c.method, float(c.ewc.strength),
                   float(c.ewc.decay), int(c.ewc.fisher_examples), float(c.l2sp.strength),
                   int(c.replay.size), float(c.replay.ratio), parse_reference(c.reference),
                   c.split)
    settings.check(config)
    return settings

  @property
  def sequence(self) -> str:
    return "class-incremental" if self.scenario == "class" else "task-incremental"

  def check(self, config):
    if self.method not in METHODS:
      raise UserError(f"continual.method must be one of {list(METHODS)}, got {self.method!r}")
    if self.scenario not in SCENARIOS:
      raise UserError(f"continual.scenario must be one of {list(SCENARIOS)}, got "
                      f"{self.scenario!r}")
    if self.split not in ("test", "eval"):
      raise UserError(f"continual.split must be 'test' or 'eval', got {self.split!r}")
    if not 0.0 <= self.replay_ratio < 1.0:
      raise UserError(f"continual.replay.ratio must be in [0, 1), got {self.replay_ratio}")
    if self.method == "replay" and not (self.replay_ratio > 0 and self.replay_size > 0):
      raise UserError("continual.method='replay' needs continual.replay.size > 0 and "
                      f"continual.replay.ratio in (0, 1), got size {self.replay_size}, ratio "
                      f"{self.replay_ratio}")
    if self.method == "ewc" and not (0 < self.ewc_strength < math.inf
                                     and 0 <= self.ewc_decay <= 1 and self.fisher_examples > 0):
      raise UserError("continual.method='ewc' needs a finite continual.ewc.strength > 0, decay "
                      f"in [0, 1] and fisher_examples > 0, got {self.ewc_strength}, "
                      f"{self.ewc_decay}, {self.fisher_examples}")
    if self.method == "l2sp" and not (0 < self.l2sp_strength < math.inf
                                      and config.init.weights):
      raise UserError("continual.method='l2sp' pulls towards the weights the run starts from: "
                      "it needs init.weights and a finite continual.l2sp.strength > 0")
    if self.method == "lora" and self.scenario == "class":
      raise UserError("continual.method='lora' selects each task's adapter by its task id, which "
                      "class-incremental learning does not have at test time: use "
                      "continual.scenario='task'")
    if self.method == "lora" and (config.peft.method != "lora" or not config.init.weights):
      raise UserError("continual.method='lora' trains a LoRA per task over a frozen base: it needs "
                      "peft.method='lora' and init.weights (configs/continual.py:method=lora sets "
                      "the first)")
    if self.method != "lora" and config.peft.method != "none":
      raise UserError(f"peft.method={config.peft.method!r} is for continual.method='lora'")
    if config.evals.get("best_metric"):
      raise UserError(f"evals.best_metric={config.evals.best_metric!r}: a stage hands its last "
                      "weights to the next, so no best checkpoint is kept; leave it empty")
    if self.reference and len(self.reference) != len(self.stages):
      raise UserError(f"continual.reference has {len(self.reference)} values for "
                      f"{len(self.stages)} stages")
    unknown = sorted({s.source for s in self.stages} - set(config.tasks.keys()))
    if unknown:
      raise UserError(f"continual.stages read task(s) {unknown} that config.tasks does not have "
                      f"(it has {list(config.tasks.keys())})")
    kinds = {s.source: config.tasks[s.source].kind for s in self.stages}
    other = sorted(n for n, k in kinds.items() if k != "classification")
    if other:
      raise UserError(f"continual learning trains classification tasks; {other} are "
                      f"{[kinds[n] for n in other]}")
    names = [s.name for s in self.stages]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated and self.scenario == "task":
      raise UserError(f"continual.stages repeats {repeated}: each stage is its own task")

  def check_classes(self, all_classes: dict):
    """`all_classes`: {source: its class names}. Every stage's classes exist; a class-incremental
    split covers its one task's classes exactly once."""
    for s in self.stages:
      missing = [c for c in s.classes if c not in all_classes[s.source]]
      if missing:
        raise UserError(f"continual stage {s.index + 1} ({s.name}): {s.source} has no class(es) "
                        f"{missing}; its classes: {all_classes[s.source]}")
      if len(set(s.classes)) != len(s.classes):
        raise UserError(f"continual stage {s.index + 1} ({s.name}) names a class twice")
      if len(s.classes) == 1 and self.scenario == "task":
        raise UserError(f"continual stage {s.index + 1} ({s.name}) keeps one class: a task needs "
                        "two or more")
    if self.scenario != "class":
      return
    sources = sorted({s.source for s in self.stages})
    if len(sources) != 1:
      raise UserError(f"a class-incremental split divides one task's classes, got stages of "
                      f"{sources}")
    seen = [c for s in self.stages for c in (s.classes or all_classes[sources[0]])]
    repeated = sorted({c for c in seen if seen.count(c) > 1})
    dropped = [c for c in all_classes[sources[0]] if c not in seen]
    if repeated:
      raise UserError(f"the class-incremental split repeats class(es) {repeated}: each class "
                      "belongs to one stage")
    if dropped:
      raise UserError(f"the class-incremental split drops class(es) {dropped} of {sources[0]}: "
                      "every class belongs to one stage")


def parse_stages(text: str) -> tuple:
  parts = [p.strip() for p in str(text).split("+")] if str(text).strip() else []
  if not parts:
    raise UserError("continual.stages is empty: name the stages, joined by '+', e.g. "
                    "'bbc_news:business/entertainment+bbc_news:politics/sports'")
  stages = []
  for i, part in enumerate(parts):
    source, _, classes = part.partition(":")
    names = tuple(c.strip() for c in classes.split("/")) if classes else ()
    if not source or "" in names:
      raise UserError(f"continual stage {i + 1} {part!r} is not TASK or TASK:CLASS/CLASS/...")
    stages.append(Stage(i, source, names))
  return tuple(stages)


def parse_reference(text: str) -> tuple:
  if not str(text).strip():
    return ()
  try:
    return tuple(float(v) for v in str(text).split("/"))
  except ValueError:
    raise UserError(f"continual.reference must be '/'-separated accuracies, got {text!r}") from None
