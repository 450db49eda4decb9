"""EWC and L2-SP: one quadratic pull of the parameters towards an anchor.

  penalty(theta) = strength / 2 * sum_p weight_p * (theta_p - anchor_p) ** 2

  EWC (Kirkpatrick et al. 2017; online, Schwarz et al. 2018): anchor = the parameters after the
      previous stage, weight = its diagonal Fisher F. After stage k the continual run estimates
      F_k, the mean over `ewc.fisher_examples` of the stage's training examples of the squared
      gradient of the example's loss (the empirical Fisher: observed labels; the stage's own
      objective, masked classes and all), and keeps F = decay * F_previous + F_k
      (WORKDIR/stages/<stage>/fisher.npz). Stage 1 has no penalty.
  L2-SP (Li et al. 2018): anchor = the weights the sequence started from (`init.weights`),
      weight 1 on every parameter loaded from them (the backbone); new heads are free.
`ContinualPenalty` is the penalty as a training feature (research/train/feature.py), on in a
continual run's stages after the first: the anchor and the weights reach the jitted step as its
`step_inputs` (arguments laid out like the parameters, never compiled constants); the term is
logged as train/ewc or train/l2sp.
"""
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import checkpoint as ckpt_lib
from research import objectives as objectives_lib
from research import params as params_lib
from research.continual.settings import ContinualConfig
from research.errors import UserError
from research.objectives import Regularizer
from research.train.feature import Feature, ResolvedModel
from research.train.step import make_loss_fn

FISHER_FILE = "fisher.npz"


def value(params, data, strength: float):
  """strength / 2 * sum over the anchored paths of weight * (param - anchor) ** 2."""
  flat = params_lib.flatten(params)
  total = 0.0
  for path, anchor in data["anchor"].items():
    diff = jnp.square(flat[path].astype(jnp.float32) - anchor)
    if "weight" in data:
      diff = diff * data["weight"][path]
    total = total + diff.sum()
  return 0.5 * strength * total


@dataclasses.dataclass(frozen=True)
class ContinualPenalty(Feature):
  """EWC (from stage 2) or L2-SP (from stage 1) in a continual stage's run."""
  name = "continual"
  method: str  # 'ewc' or 'l2sp'
  strength: float
  anchor_source: str  # EWC: the previous stage's workdir; L2-SP: continual.base (init.weights)
  scan_layers: bool

  @classmethod
  def of_run(cls, config) -> "ContinualPenalty | None":
    if not config.get("continual") or int(config.continual.stage) < 1:
      return None
    settings = ContinualConfig.of_run(config)
    scan = bool(config.model.get("scan_layers", False))
    if settings.method == "l2sp":
      return cls("l2sp", settings.l2sp_strength, config.continual.base, scan)
    if settings.method == "ewc" and config.continual.previous:
      return cls("ewc", settings.ewc_strength, config.continual.previous, scan)
    return None

  @property
  def regularizers(self) -> tuple:
    strength = self.strength
    return (Regularizer(self.method, lambda params, data: value(params, data, strength)),)

  def check(self, model: ResolvedModel):
    """EWC's Fisher diagonal covers exactly this model's parameters."""
    if self.method == "ewc" and set(fisher_paths(self.anchor_source)) != set(model.param_shapes):
      raise UserError(f"{os.path.join(self.anchor_source, FISHER_FILE)} does not cover this "
                      "model's parameters: was the stage run with another model?")

  def step_inputs(self, run, abstract_params):
    """{'anchor': {path: array}[, 'weight': {path: array}]}, each laid out like its parameter.
    L2-SP anchors the parameters loaded from continual.base whose shape is this model's (not
    the new heads)."""
    params = params_lib.flatten(abstract_params)
    key = "continual.previous" if self.method == "ewc" else "continual.base"
    source = ckpt_lib.weights_of(self.anchor_source, self.scan_layers, key)
    data = {"anchor": {p: np.asarray(v, np.float32) for p, v in source.items()
                       if p in params and tuple(v.shape) == tuple(params[p].shape)}}
    if self.method == "ewc":
      data["weight"] = load_fisher(self.anchor_source)
    return jax.device_put(data, {field: {p: params[p].sharding for p in arrays}
                                 for field, arrays in data.items()})


def fisher_paths(stage_dir: str) -> list:
  """The parameter paths of a stage's Fisher diagonal (read from the file's index only)."""
  path = os.path.join(stage_dir, FISHER_FILE)
  if not os.path.exists(path):
    raise UserError(f"no Fisher diagonal ({FISHER_FILE}) in {stage_dir!r}: the continual run "
                    "writes it when that stage ends")
  with np.load(path) as f:
    return list(f.files)


def load_fisher(stage_dir: str) -> dict:
  fisher_paths(stage_dir)  # or the one-line error of a stage without one
  with np.load(os.path.join(stage_dir, FISHER_FILE)) as f:
    return {p: f[p] for p in f.files}


def save_fisher(fisher: dict, stage_dir: str):
  path = os.path.join(stage_dir, FISHER_FILE)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, **fisher)
  os.replace(path + ".tmp", path)


def fisher_diagonal(model, params, objectives, features: list, num_examples: int, seed: int,
                    chunk: int, mesh, rules) -> dict:
  """{path: mean over examples of the squared gradient of the example's loss} over
  `num_examples` of `features` (a fixed random choice keyed by `seed`; every process the same)."""
  loss_fn = make_loss_fn(model, objectives)

  def example_loss(p, row):
    batch = jax.tree.map(lambda x: x[None], row)
    return loss_fn(p, batch, None, objectives_lib.counts(objectives, batch))[0]

  @jax.jit
  def squared_grads(p, rows):
    def add(total, row):
      grads = jax.grad(example_loss)(p, row)
      return jax.tree.map(lambda t, g: t + jnp.square(g.astype(jnp.float32)), total, grads), None
    zero = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), p)
    return jax.lax.scan(add, zero, rows)[0]

  count = min(num_examples, len(features))
  chosen = np.random.default_rng(seed).permutation(len(features))[:count]
  total = None
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for start in range(0, count, chunk):
      picked = [features[int(i)] for i in chosen[start:start + chunk]]
      rows = {k: np.stack([r[k] for r in picked]) for k in picked[0]}
      part = squared_grads(params, rows)
      total = part if total is None else jax.tree.map(jnp.add, total, part)
  return {p: np.asarray(v) / count for p, v in params_lib.flatten(jax.device_get(total)).items()}


def online(previous: dict | None, new: dict, decay: float) -> dict:
  """F = decay * F_previous + F_new (online EWC's running Fisher)."""
  if previous is None:
    return new
  return {p: decay * previous[p] + v for p, v in new.items()}

