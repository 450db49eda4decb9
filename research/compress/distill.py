"""Knowledge distillation: the `distill` config section, the frozen teacher, the student's start.

`config.distill` (configs/finetune.py and configs/mlm.py; off while `teacher` is ''):
  teacher        a workdir of ours (its latest weights) or 'hf:DIR' (a transformers checkpoint)
                 with the student's heads and the student's tokenizer
  temperature    T of the soft targets
  soft_weight    weight of T^2 KL(teacher || student) on the soft targets (each task objective's
                 predictions: classes, token labels, masked tokens)
  hard_weight    weight of the task's own loss
  hidden_weight  weight of hidden-state matching (0: off): student block i's output against
                 teacher block (i + 1) m - 1, m = teacher layers / student layers (TinyBERT's
                 layer map); across widths through a learned projection per student block
                 (`model.distill_width`, which `configure` sets: `projection_width`)
  attention_weight  weight of attention matching (0: off): KL(teacher || student) of each query's
                 attention distribution in the same pairs of blocks; the same number of heads
  init           '' (the usual policy: scratch, or `init.weights` from another checkpoint) or
                 'every_k': the student takes the teacher's shape but `model.num_layers`, and its
                 embeddings, pooler, heads and blocks 0, m, 2m, ... (research/train/initialization)
  precompute     compute the teacher's logits on the run's batches once, to disk, instead of in
                 every step (research/compress/precomputed.py; soft targets only)
  precompute_dir where they go (default WORKDIR/teacher_logits): students sharing it share them
The loss terms are research/objectives/distillation.py. `Distill` is distillation as a training
feature (research/train/feature.py): its `configure` and `check` run while the run is resolved,
before anything is written; the teacher is loaded when the state is built (a resumed run reloads
it: it is never checkpointed) and its parameters are the step's input, or its logits are
computed once and ride with the batches (research/compress/precomputed.py). The command that
trains a student of a workdir is research/compress/distill_command.py.
"""
import dataclasses
import logging
import os

import jax
import numpy as np

from research import config_section
from research import checkpoint as ckpt_lib
from research import models
from research import params as params_lib
from research.compress import precomputed
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError
from research.models import layers, layout
from research.objectives import distillation
from research.peft.config import PeftConfig
from research.train.feature import Feature, ResolvedModel

log = logging.getLogger(__name__)

INITS = ("", "every_k")
PROJECTION_PATTERN = f"/{layers.DISTILL_PROJECTION}/"  # the blocks' learned maps to its width
# Model fields an every_k student keeps from its own config (the rest are the teacher's).
STUDENT_FIELDS = ("num_layers", "heads", "num_labels", "dtype", "param_dtype", "attention_impl",
                  "remat", "scan_layers", "peft", "dropout_rate")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  teacher: str = ""
  temperature: float = 2.0
  soft_weight: float = 1.0
  hard_weight: float = 1.0
  hidden_weight: float = 0.0
  attention_weight: float = 0.0
  init: str = ""
  precompute: bool = False
  precompute_dir: str = ""

  @classmethod
  def from_dict(cls, d) -> "DistillConfig":
    return config_section.parse(cls, d, "distill")

  @property
  def active(self) -> bool:
    return bool(self.teacher)

  def validate(self):
    if not 0 < self.temperature < np.inf:  # written so that NaN, which fails every test, fails
      raise UserError(f"distill.temperature must be finite and > 0, got {self.temperature!r}")
    for name in ("soft_weight", "hard_weight", "hidden_weight", "attention_weight"):
      if not 0 <= getattr(self, name) < np.inf:
        raise UserError(f"distill.{name} must be finite and >= 0, got {getattr(self, name)!r}")
    if self.init not in INITS:
      raise UserError(f"distill.init must be one of {list(INITS)}, got {self.init!r}")
    precomputed.check(self)


def section() -> dict:
  """The `distill` section of a recipe: off (no teacher)."""
  return dataclasses.asdict(DistillConfig())


def of_run(config) -> DistillConfig:
  return DistillConfig.from_dict(config.get("distill"))


def _hf_dir(teacher: str) -> str | None:
  if not teacher.startswith("hf:"):
    return None
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  return hf.resolve(teacher[3:])


def teacher_model_config(teacher: str) -> models.ModelConfig:
  """The teacher's own ModelConfig (reading its config only, no weights)."""
  directory = _hf_dir(teacher)
  if directory:
    from research.convert import hf  # pylint: disable=g-import-not-at-top
    return hf.model_config_of(directory)
  saved = ckpt_lib.workdir_config(teacher)
  return models.ModelConfig.from_dict(saved["model"], saved.get("peft"))


def teacher_tokenizer(teacher: str) -> str:
  """The path of the teacher's tokenizer (the HF directory, or WORKDIR/tokenizer.json)."""
  return _hf_dir(teacher) or os.path.join(teacher, "tokenizer.json")


def configure(config, d: DistillConfig):
  """What a teacher implies for the student's config: its tokenizer (unless one is given) and,
  with init=every_k, its model shape but `model.num_layers` (and the run's own STUDENT_FIELDS)."""
  if d.init == "every_k" and (config.init.weights or config.init.resume):
    raise UserError("distill.init=every_k starts the student from the teacher: leave "
                    "init.weights and init.resume empty")
  if not _hf_dir(d.teacher):
    ckpt_lib.checkpoints_of(d.teacher, "distill.teacher")
    ckpt_lib.check_float_weights(d.teacher, "distill.teacher")
  if not config.data.tokenizer:
    config.data.tokenizer = teacher_tokenizer(d.teacher)
  teacher = teacher_model_config(d.teacher)
  if d.init == "every_k":
    for field, value in dataclasses.asdict(teacher).items():
      if field not in STUDENT_FIELDS:
        config.model[field] = value
  width = projection_width(d, teacher, config.model.hidden_size)
  config.model.distill_width = width
  frozen_some = (config.optim.get("trainable") or
                 PeftConfig.from_dict(config.get("peft")).trainable_patterns)
  if width and frozen_some:  # PEFT or optim.trainable train a subset: the projection too
    config.optim.trainable = (*config.optim.get("trainable", ()), PROJECTION_PATTERN)


def projection_width(settings: DistillConfig, teacher: models.ModelConfig,
                     student_hidden: int) -> int:
  """`model.distill_width`: the teacher's width when hidden states are matched across widths
  (each student block then learns a map to it), else 0."""
  if settings.hidden_weight and teacher.hidden_size != student_hidden:
    return teacher.hidden_size
  return 0


def layer_ratio(teacher_layers: int, student_layers: int) -> int:
  """m of the layer map (student block i <-> teacher block (i + 1) m - 1, init every m-th)."""
  if teacher_layers % student_layers:
    raise UserError(f"distill: the teacher's {teacher_layers} blocks are not a multiple of the "
                    f"student's model.num_layers ({student_layers}); the layer map pairs student "
                    "block i with teacher block (i + 1) m - 1")
  return teacher_layers // student_layers


def check(config, model_cfg: models.ModelConfig, tokenizer, objectives: tuple,
          d: DistillConfig):
  """Refuses, in one line, a teacher the student cannot learn from: another vocabulary, other
  heads, a depth the layer map cannot pair, other head counts for attention matching, an
  objective without soft targets."""
  own = tokenizer_lib.load(teacher_tokenizer(d.teacher))
  if own.get_vocab() != tokenizer.get_vocab():
    raise UserError(
        f"distill.teacher {d.teacher!r} uses another tokenizer than the student "
        f"({own.get_vocab_size()} vs {tokenizer.get_vocab_size()} tokens in data.tokenizer "
        f"{config.data.tokenizer!r}): leave data.tokenizer empty to take the teacher's")
  teacher = teacher_model_config(d.teacher)
  if teacher.vocab_size != model_cfg.vocab_size:
    raise UserError(f"distill.teacher {d.teacher!r} has model.vocab_size {teacher.vocab_size}, the "
                    f"student {model_cfg.vocab_size}: they must predict the same vocabulary")
  heads = lambda cfg: sorted((s.name, s.kind, s.num_labels) for s in cfg.head_specs)
  if heads(teacher) != heads(model_cfg):
    raise UserError(f"distill.teacher {d.teacher!r} has heads {list(teacher.heads)}, the student "
                    f"needs {list(model_cfg.heads)} (num_labels {model_cfg.num_labels})")
  if d.init == "every_k" or d.hidden_weight or d.attention_weight:
    layer_ratio(teacher.num_layers, model_cfg.num_layers)
  if d.attention_weight and teacher.num_heads != model_cfg.num_heads:
    raise UserError(f"distill.attention_weight: the teacher has {teacher.num_heads} attention "
                    f"heads, the student {model_cfg.num_heads}; attention matching pairs heads "
                    "(set distill.attention_weight=0)")
  precomputed.check(d, jax.process_count())
  no_soft = [o.name for o in objectives if o.predictions is None]
  if d.soft_weight and no_soft:
    raise UserError(f"distill.soft_weight: objectives {no_soft} predict no classes (regression, "
                    "multi-label) and have no soft targets; set distill.soft_weight=0")


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The frozen teacher of a run: its model and its (host) parameters. `outputs` is what the
  train step calls with the parameters as the step's argument."""
  source: str
  model_cfg: models.ModelConfig
  params: dict
  ratio: int  # m of the layer map
  sown: tuple = ()  # what the blocks' outputs are matched on: layers.BLOCK_OUTPUTS, ATTENTION

  @classmethod
  def load(cls, d: DistillConfig, student_cfg: models.ModelConfig) -> "Teacher":
    own = teacher_model_config(d.teacher)
    model_cfg = dataclasses.replace(own, heads=student_cfg.heads,
                                    num_labels=student_cfg.num_labels, dtype=student_cfg.dtype,
                                    distill_width=0,
                                    scan_layers=False, remat="none", dropout_rate=0.0)
    from research.convert import hf  # pylint: disable=g-import-not-at-top
    source = ckpt_lib.weights_of(d.teacher, scan_layers=False, key="distill.teacher")
    shapes = hf.expected_shapes(model_cfg)
    missing = [p for p, shape in shapes.items()
               if p not in source or tuple(source[p].shape) != shape]
    if missing:
      raise UserError(f"distill.teacher {d.teacher!r} lacks parameters {missing[:5]}")
    params = params_lib.unflatten({p: np.asarray(source[p]) for p in shapes})
    ratio = own.num_layers // student_cfg.num_layers
    sown = tuple(name for name, weight in ((layers.BLOCK_OUTPUTS, d.hidden_weight),
                                          (layers.ATTENTION, d.attention_weight)) if weight)
    return cls(d.teacher, model_cfg, params, ratio, sown)

  def shardings(self, mesh, rules):
    """NamedShardings of the teacher's parameters under the run's logical axis rules, as the
    student's are laid out (split over fsdp and tensor, not copied to every device); a mesh
    that cannot split one of them is refused in one line."""
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    from research import sharding  # pylint: disable=g-import-not-at-top
    model = models.build(self.model_cfg)
    with nn.logical_axis_rules(rules):
      boxed = jax.eval_shape(lambda: model.init(
          jax.random.key(0), np.zeros((1, 8), np.int32),
          masked_positions=np.zeros((1, 1), np.int32)))["params"]
    try:
      return sharding.shardings_of(boxed, mesh, rules)
    except UserError as e:
      raise UserError(f"distill.teacher {self.source!r}: {e}") from None

  def outputs(self, params, batch) -> dict:
    """The teacher's logits (every '<head>_logits') and what its blocks sowed (`sown`), of the
    blocks the layer map picks: (batch, student layers, ...)."""
    from research.train.step import apply_model  # pylint: disable=g-import-not-at-top
    out = apply_model(models.build(self.model_cfg), params, batch, sown=self.sown)
    picked = np.arange(self.ratio - 1, self.model_cfg.num_layers, self.ratio)
    return {**{k: v for k, v in out.items() if k.endswith("_logits")},
            **{name: out[name][:, picked] for name in self.sown}}

  def student_weights(self, num_layers: int, scan_layers: bool) -> dict:
    """{path: array} of distill.init=every_k: everything but the blocks as the teacher's, student
    block i the teacher's block i m (m = `ratio`), in the student's layout."""
    backbone = dict(self.params["backbone"])
    blocks = {layout.unrolled_name(i): backbone.pop(layout.unrolled_name(i * self.ratio))
              for i in range(num_layers)}
    for name in list(backbone):
      if name.startswith("layer_"):
        backbone.pop(name)
    params = {**self.params, "backbone": {**backbone, **blocks}}
    return params_lib.flatten(layout.as_layout(params, scan_layers))

  def describe(self, num_layers: int) -> str:
    return (f"distill.init=every_k from {self.source} (teacher blocks "
            f"{[i * self.ratio for i in range(num_layers)]})")




# ---------------------------------------------------------------------------------------------
# As a training feature (research/train/feature.py): on when distill.teacher is set.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Distill(Feature):
  name = "distill"
  settings: DistillConfig
  # The teacher, loaded once per run when the state is built (`teacher`), never compared.
  loaded: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  @classmethod
  def section(cls) -> dict:
    return section()

  @classmethod
  def of_run(cls, config) -> "Distill | None":
    settings = of_run(config)
    return cls(settings) if settings.active else None

  def configure(self, config):
    configure(config, self.settings)

  def check(self, model: ResolvedModel):
    check(model.config, model.model_cfg, model.task_set.tokenizer, model.objectives,
          self.settings)

  def teacher(self, run) -> Teacher:
    if "teacher" not in self.loaded:
      self.loaded["teacher"] = Teacher.load(self.settings, run.model_cfg)
    return self.loaded["teacher"]

  @property
  def sown(self) -> tuple:
    return tuple(name for name, weight in ((layers.BLOCK_OUTPUTS, self.settings.hidden_weight),
                                          (layers.ATTENTION, self.settings.attention_weight))
                 if weight)

  def initial_weights(self, run):
    """distill.init=every_k: the teacher's weights, every k-th block."""
    if self.settings.init != "every_k":
      return None
    teacher, layers_ = self.teacher(run), run.config.model.num_layers
    return (teacher.student_weights(layers_, run.config.model.scan_layers),
            teacher.describe(layers_))

  def step_inputs(self, run, abstract_params):
    """The teacher's parameters, laid out by the run's rules (None with distill.precompute)."""
    if self.settings.precompute:
      return None
    teacher = self.teacher(run)
    return jax.device_put(teacher.params, teacher.shardings(run.mesh, run.rules))

  def train_batches(self, run, batch_fn, workdir: str):
    """With distill.precompute: the stored logits ride with each step's host batch."""
    if not self.settings.precompute:
      return batch_fn
    logits = precomputed.TeacherLogits.of_run(run, self.teacher(run), self.settings, workdir)
    log.info("distill.precompute: the teacher's logits from %s", logits.folder)
    return logits.batches(batch_fn)

  def objectives(self, objectives: tuple) -> tuple:
    return distillation.with_distillation(objectives, self.settings)

  def prepare_batch(self, batch, inputs):
    """The teacher's outputs join the batch (inputs: its parameters), as the objectives' soft
    targets, under `stop_gradient`; with distill.precompute the batch holds them already."""
    if inputs is None:
      return batch
    teacher = self.loaded["teacher"]  # loaded by `step_inputs`, before the step is traced
    return {**batch, distillation.TEACHER: jax.lax.stop_gradient(teacher.outputs(inputs, batch))}
