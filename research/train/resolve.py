"""Resolve a run's config in one place, before anything is written; then freeze it.

`resolve(config, workdir, registry) -> Run` checks that no live run holds the workdir, checks
the values, parses the sections of the training features `registry` lists that the config turns
on (research/train/feature.py; each once, into `Run.features`), applies what the initialisation
source and the features imply (`init.weights` from HF: the model's shape and
tokenizer), derives `objective.max_predictions`, reads the data into the `TaskSet`, takes
`model.vocab_size` from the tokenizer and `model.heads` from the tasks, builds the mesh, checks
the batch against it, the optimizer settings, and a checkpoint already in the workdir against
the model, the rest of the config (`checkpoint.check_same_run`) and the tokenizer (its
fingerprint, `checkpoint.check_same_tokenizer`); an adapter-only checkpoint
(its own or `init.resume`'s) against its base: still there, same checksum (`check_base`). A damaged newest checkpoint
is only skipped here (the newest one whose metadata reads is the one compared); the trainer's
`build_state` moves it aside, since this phase writes nothing. Every bad input raises
`UserError` here, so a failing run leaves the workdir as it was. The config that comes out is a
`FrozenConfigDict`: nothing later changes it.
"""
import dataclasses
import json
import logging
import os

import jax
import ml_collections

from research import checkpoint as ckpt_lib
from research import models, run_shape, sharding, tasks, validation
from research import params as params_lib
from research.errors import UserError
from research.models import quantization
from research.train import feature as feature_lib
from research.train import initialization, optim
from research.train import state as state_lib
from research.workdir import check_not_in_use

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
  config: ml_collections.FrozenConfigDict
  model_cfg: models.ModelConfig
  task_set: tasks.TaskSet
  mesh: jax.sharding.Mesh
  rules: tuple
  latest_step: int | None  # the workdir's own newest readable checkpoint (None: a new run)
  features: tuple = ()  # the training features this run turns on, in the registry's order

  @property
  def trainable(self):
    """path -> bool: whether the parameter at `path` is trained (`optim.trainable`, features)."""
    return optim.trainable_predicate(self.config, self.features)


def resolve(config, workdir: str, registry) -> Run:
  check_not_in_use(workdir, jax.process_index())
  config = config.copy_and_resolve_references()
  validation.check_config(config)
  check_trainable_quantization(config.model.get("quantization", "none"))
  features = feature_lib.enabled(registry, config)  # each feature's section, parsed once
  mesh = sharding.make_mesh(config.mesh)
  check_batch(config, mesh)
  own = os.path.join(workdir, "checkpoints")
  latest = ckpt_lib.Checkpointer.latest_in(own)  # newest readable; damaged ones: build_state
  if latest is not None:  # before `configure` reads init.weights (an adapter-only run's base)
    check_base(ckpt_lib.Checkpointer(own, use_async=False), latest)
  initialization.check_sources(config, resuming=latest is not None)
  initialization.configure(config)
  for feature in features:  # e.g. a teacher's tokenizer and, for an every_k student, its shape
    feature.configure(config)
  run_shape.derive_max_predictions(config)  # the data pipeline masks that many positions
  task_set = tasks.build(config, workdir)
  run_shape.derive(config, task_set.tokenizer.get_vocab_size(), task_set.head_specs)
  model_cfg = models.ModelConfig.of_run(config)
  rules = sharding.rules_of(config)
  model = feature_lib.ResolvedModel(config, model_cfg, task_set, lambda: state_lib.abstract_params(
      models.build(model_cfg), config, mesh, rules))
  for feature in features:
    feature.check(model)
  optim.build(config, features)  # its settings fail here, not after the workdir is written
  check_path_patterns(config, list(model.param_shapes))
  if latest is not None:  # resuming: the same model, run and tokenizer, or a one-line refusal
    check_resumable(config, task_set.tokenizer, ckpt_lib.Checkpointer(own, use_async=False),
                    latest, workdir)
  elif config.init.resume:
    other = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_of(config.init.resume, "init.resume"),
                                  use_async=False)
    step = other.newest_readable()
    if step is None:
      raise UserError(f"init.resume: no checkpoint in {other.directory!r} has readable metadata "
                      "(each is damaged)")
    ckpt_lib.check_same_shapes(other.saved_config(step)["model"], config.model.to_dict(),
                               f"init.resume {config.init.resume!r}")
    check_base(other, step)
  return Run(ml_collections.FrozenConfigDict(config), model_cfg, task_set, mesh,
             sharding.rules_of(config), latest, features)


def check_resumable(config, tokenizer, own: ckpt_lib.Checkpointer, step: int, workdir: str):
  """The workdir's checkpoint `step` is of this model, this run (`check_same_run`) and this
  tokenizer (its fingerprint, from WORKDIR/tokenizer.json or data.tokenizer); a config.json that
  is not the checkpoint's (damaged, edited by hand) gets one warning line: it is rewritten."""
  saved = own.saved_config(step)
  where = f"workdir {workdir!r}"
  ckpt_lib.check_same_shapes(saved["model"], config.model.to_dict(), where)
  ckpt_lib.check_same_run(saved, json.loads(config.to_json_best_effort()), where)
  tokenizer_path = config.data.tokenizer or os.path.join(workdir, "tokenizer.json")
  ckpt_lib.check_same_tokenizer(own.saved_data_state(step).get("tokenizer_sha256"), tokenizer,
                                where, tokenizer_path, step)
  warn_if_edited(os.path.join(workdir, "config.json"), saved, step)


def warn_if_edited(path: str, saved: dict, step: int):
  """One warning line if `path` (the workdir's config.json) does not hold checkpoint `step`'s
  config (fields a resumed run may change aside): the run rewrites it with its own config."""
  try:
    with open(path) as f:
      diff = ckpt_lib.config_diff(saved, json.load(f))
    problem = f"differs from checkpoint {step}'s config ({diff[0]})" if diff else None
  except FileNotFoundError:
    problem = None
  except (OSError, ValueError, AttributeError) as e:  # not JSON, or not a JSON object
    problem = f"is not a readable config ({' '.join(str(e).split())[:80]})"
  if problem:
    log.warning("%s %s: the run rewrites it with its own config (the checkpoint's config is "
                "the one trained)", path, problem)


def check_trainable_quantization(mode: str):
  """Int8 kernels are for inference: a run trains float ones (fake-quantized with 'qat')."""
  if mode in quantization.INT8_MODES:
    raise UserError(f"model.quantization={mode!r} holds int8 kernels, an inference model "
                    "(research.predict): it cannot be trained; fine-tune with "
                    "model.quantization='qat', then quantize with python -m research.compress "
                    "--method=quantize")


def check_base(ckpt: ckpt_lib.Checkpointer, step: int):
  """An adapter-only checkpoint's base is where it was and unchanged (checksum), or `UserError`."""
  base = ckpt.saved_base(step)
  if base is not None:
    base.load_frozen(ckpt.step_path(step))


def check_path_patterns(config, paths: list):
  """Each regex of `optim.trainable` and `init.exclude` names at least one parameter: one that
  names none would silently train (or load) everything, e.g. a per-block path such as
  '^backbone/layer_1/' in the scanned layout, where all blocks are one stacked array."""
  for key, patterns in (("optim.trainable", config.optim.get("trainable", ())),
                        ("init.exclude", config.init.exclude)):
    for pattern in patterns:
      if not any(params_lib.matches([pattern])(p) for p in paths):
        stacked = " (model.scan_layers=True: all blocks are one array, under backbone/layers/)" \
            if config.model.get("scan_layers") else ""
        raise UserError(f"{key} pattern {pattern!r} matches no parameter of this model{stacked}; "
                        f"its paths look like {', '.join(paths[:2])}, ..., {paths[-1]}")


def check_batch(config, mesh):
  batch, dp = config.train.batch_size, sharding.data_parallel_size(mesh)
  accum = config.train.grad_accum_steps
  if batch % (dp * accum) or batch % jax.process_count():
    raise UserError(f"train.batch_size ({batch}) must be divisible by the data-parallel size "
                    f"(mesh data x fsdp = {dp}) times train.grad_accum_steps ({accum}), and by "
                    f"the {jax.process_count()} host(s)")
