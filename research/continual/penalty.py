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
The anchor and the weights reach the jitted step as a `Regularizer`'s data (an argument laid out
like the parameters, never a compiled constant); the term is logged as train/ewc or train/l2sp.
"""
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


def regularizers(config, shapes: dict) -> tuple:
  """The continual method's penalty of this stage's run (() for the others, or EWC's stage 1).
  `shapes`: {path: shape} of the model's parameters."""
  if not config.get("continual") or int(config.continual.stage) < 1:
    return ()
  settings = ContinualConfig.of_run(config)
  scan = config.model.get("scan_layers", False)
  if settings.method == "l2sp":
    source = ckpt_lib.weights_of(config.continual.base, scan, "continual.base")
    anchor = {p: np.asarray(v, np.float32) for p, v in source.items()
              if p in shapes and tuple(v.shape) == tuple(shapes[p])}
    strength = settings.l2sp_strength
    return (Regularizer("l2sp", lambda params, data: value(params, data, strength),
                        {"anchor": anchor}),)
  if settings.method == "ewc" and config.continual.previous:
    previous = config.continual.previous
    fisher = load_fisher(previous)
    anchor = {p: np.asarray(v, np.float32)
              for p, v in ckpt_lib.weights_of(previous, scan, "continual.previous").items()}
    if set(fisher) != set(anchor) or set(anchor) != set(shapes):
      raise UserError(f"{os.path.join(previous, FISHER_FILE)} does not cover this model's "
                      "parameters: was the stage run with another model?")
    strength = settings.ewc_strength
    return (Regularizer("ewc", lambda params, data: value(params, data, strength),
                        {"anchor": anchor, "weight": fisher}),)
  return ()


def load_fisher(stage_dir: str) -> dict:
  path = os.path.join(stage_dir, FISHER_FILE)
  if not os.path.exists(path):
    raise UserError(f"no Fisher diagonal ({FISHER_FILE}) in {stage_dir!r}: the continual run "
                    "writes it when that stage ends")
  with np.load(path) as f:
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

