"""The training-feature interface (research/train/feature.py): the trainer names no feature, and
a feature defined outside the library (here, in this file) reaches the run through its hooks
alone: its section, a step input on the mesh, a regulariser, an evaluation entry, a summary
entry."""
import ast
import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config
from research import features, objectives, params as params_lib, tracking
from research.errors import UserError
from research.train import feature as feature_lib
from research.train import trainer
from research.train.feature import Feature

FEATURE_PACKAGES = ("research.peft", "research.compress", "research.continual", "research.ema",
                    "research.objectives.distillation", "research.features")


def _imports(path):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_trainer_imports_no_training_feature():
  """Only research/train/__init__.py, where `research.train.run` hands the registry to the
  trainer, imports the registry; no module of research/train/ imports a feature."""
  train_dir = os.path.join(REPO, "research", "train")
  for name in sorted(os.listdir(train_dir)):
    if not name.endswith(".py"):
      continue
    found = [m for m in _imports(os.path.join(train_dir, name))
             if m.startswith(FEATURE_PACKAGES)]
    allowed = ["research.features", "research.features.REGISTRY"] if name == "__init__.py" else []
    assert found == allowed, (name, found)


@dataclasses.dataclass(frozen=True)
class PullToward(Feature):
  """A feature users might write: pull the weights toward a constant, read from a step input."""
  name = "pull"
  strength: float

  @classmethod
  def section(cls):
    return None  # a recipe (this test) adds it

  @classmethod
  def of_run(cls, config):
    pull = config.get("pull")
    return cls(float(pull.strength)) if pull and pull.strength else None

  @property
  def regularizers(self):
    def pull(params, target):
      return self.strength * sum(jnp.sum(jnp.square(v - target["value"]))
                                 for v in params_lib.flatten(params).values())
    return (objectives.Regularizer("pull", pull),)

  def step_inputs(self, run, abstract_params):
    return {"value": jnp.full((), 0.5, jnp.float32)}

  def evaluated(self, state, evaluate):
    return {"pull/evaluated_at": int(state.step)}

  def finish(self, params, state, workdir, evaluate):
    return {"pull/final_step": int(state.step)}


def test_a_feature_defined_outside_the_library_plugs_in_through_its_hooks(tmp_path):
  config = tiny_config("finetune", steps=3)
  config.data.seq_len = 32
  config.evals.every_steps = 3
  config.pull = {"strength": 1e-3}
  summary = trainer.run(config, str(tmp_path / "on"), features.REGISTRY + (PullToward,))
  records = [r for r in tracking.read_metrics(str(tmp_path / "on")) if "train/pull" in r]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(r["train/pull"] > 0 and np.isfinite(r["train/pull"]) for r in records)
  assert summary["pull/final_step"] == 3
  assert [r["pull/evaluated_at"] for r in tracking.read_metrics(str(tmp_path / "on"))
          if "pull/evaluated_at" in r] == [3]
  # off: without the section's strength the run does not have it
  config.pull = {"strength": 0.0}
  assert [type(f) for f in feature_lib.enabled(features.REGISTRY + (PullToward,), config)] == []


def test_two_features_of_one_name_are_refused():
  config = tiny_config("finetune")
  config.pull = {"strength": 1.0}
  with pytest.raises(UserError, match="training features share a name: pull, pull"):
    feature_lib.enabled((PullToward, PullToward), config)
