"""The one interface between the trainer and a training feature.

A training feature changes how a run trains without being a task: parameter-efficient
fine-tuning (research/peft), magnitude pruning (research/compress/magnitude.py), distillation
(research/compress/distill.py), continual learning's penalties (research/continual/penalty.py),
an exponential moving average of the weights (research/ema.py). Each is a subclass of `Feature`,
registered once in research/features.py; the trainer, resolve, the optimizer and the step call
the hooks below on the run's enabled features, in the registry's order, and never name one.
A hook a feature does not define does nothing.

  name                 its config section, and its key in the step's `inputs`
  section()            the section's defaults, which every recipe gets (config_lib.common), or
                       None: the recipes that use it add it themselves
  of_run(config)       the feature with its settings parsed from the section (once, in resolve),
                       or None: off for this run
resolve (nothing written yet: a hook refuses bad input with `UserError`)
  configure(config)    what it implies for the rest of the config, before data and model exist
                       (a teacher's tokenizer and shape)
  check(model)         refuses what cannot work, given the run's `ResolvedModel`
  trainable_patterns   regexes of the parameters it trains: () = it restricts nothing
build and compile
  optimizer(tx)        wraps the optimizer (AdaLoRA's rank budget, pruning, the EMA)
  initial_weights(run)  weights a new run starts from, before `init.weights` (a student's
                       teacher blocks), as (source {path: array}, description), or None
  step_inputs(run, abstract_params)  arrays the step reads, already on the mesh (a teacher's
                       parameters, an anchor and Fisher diagonal; `abstract_params` give each
                       parameter's shape and sharding); None: it needs none
  train_batches(run, batch_fn, workdir)  wraps the host batches (step -> (task, batch)):
                       precomputed teacher logits ride along
the step (traced inside the jitted step, with this feature's own `inputs`)
  sown                 what the model's blocks must sow for its loss terms
  objectives(objectives)   replaces the task's loss terms (distillation's soft targets)
  prepare_batch(batch, inputs)  adds to the batch before the loss (a teacher's outputs)
  regularizers         `objectives.Regularizer`s: loss terms of the parameters alone,
                       `fn(params, inputs)`
the loop and the end
  evaluated(state, evaluate)  entries logged with each evaluation: `evaluate(params)` gives
                       the tasks' eval metrics of any parameters (the EMA weights')
  finish(params, state, workdir, evaluate)  the summary's entries at the end (and files it
                       writes); `params` are the ones tested (the best kept, else the last),
                       `evaluate(params, split)` any parameters' metrics on 'eval' or 'test'
"""
import dataclasses
import functools
from typing import Any, Callable, ClassVar

from research import params as params_lib
from research.errors import UserError


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  """What resolve knows when it asks the features to check the run."""
  config: Any  # the ConfigDict, resolved so far
  model_cfg: Any  # research.models.ModelConfig
  task_set: Any  # research.tasks.TaskSet
  abstract_params: Callable  # () -> the parameters' shapes (the model traced, nothing allocated)

  @functools.cached_property
  def param_shapes(self) -> dict:
    """{path: shape} of every parameter: traced on first use, so a check that must refuse a
    model before it is traced (one its layers cannot build) runs before it asks."""
    return {p: tuple(v.shape) for p, v in params_lib.flatten(self.abstract_params()).items()}

  @property
  def objectives(self) -> tuple:
    return tuple(o for task in self.task_set.tasks for o in task.objectives)


class Feature:
  """A training feature; every hook's default does nothing (see the module docstring)."""
  name: ClassVar[str] = ""
  trainable_patterns: tuple = ()
  sown: tuple = ()
  regularizers: tuple = ()

  @classmethod
  def section(cls) -> dict | None:
    return None

  @classmethod
  def of_run(cls, config) -> "Feature | None":
    raise NotImplementedError(f"{cls.__name__}.of_run")

  def configure(self, config):
    pass

  def check(self, model: ResolvedModel):
    pass

  def optimizer(self, tx):
    return tx

  def initial_weights(self, run):
    return None

  def step_inputs(self, run, abstract_params):
    return None

  def train_batches(self, run, batch_fn, workdir: str):
    return batch_fn

  def objectives(self, objectives: tuple) -> tuple:
    return objectives

  def prepare_batch(self, batch, inputs):
    return batch

  def evaluated(self, state, evaluate) -> dict:
    return {}

  def finish(self, params, state, workdir: str, evaluate) -> dict:
    return {}


def enabled(registry, config) -> tuple:
  """The features of `registry` (classes) this run turns on, each with its settings parsed."""
  features = tuple(f for f in (kind.of_run(config) for kind in registry) if f is not None)
  names = [f.name for f in features]
  if len(set(names)) != len(names):
    raise UserError(f"training features share a name: {', '.join(names)}")
  return features


def trainable_patterns(config, features) -> tuple:
  """The regexes of the trained parameters: `optim.trainable`'s and the features'; () trains
  every parameter."""
  return (tuple(config.optim.get("trainable", ())) +
          tuple(p for f in features for p in f.trainable_patterns))


def wrap_optimizer(tx, features):
  for feature in features:
    tx = feature.optimizer(tx)
  return tx
