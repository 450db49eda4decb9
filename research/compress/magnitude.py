"""Unstructured magnitude pruning during fine-tuning (Zhu & Gupta, 2017, "To prune, or not to
prune"), and one-shot after training.

The run's `prune` section (`PruneConfig`) names the pruned weights (`targets`: path regexes,
default the backbone's projection kernels), the final `sparsity` and its `scope`: 'global' (one
magnitude threshold over all targets) or 'per_layer' (each kernel, and each block of a stacked
kernel, pruned to the sparsity on its own). The sparsity follows the cubic ramp
  s(t) = s_f (1 - (1 - (t - start_step) / (end_step - start_step))^3)
from 0 at update `start_step` to s_f at update `end_step` (t: the updates applied before this
one, 0-based; the state's step unless non-finite steps were dropped); the masks are recomputed from the
weights' magnitudes at every `interval`-th update of [start_step, end_step] and at end_step, then
kept. `pruning` wraps the optimizer: its state holds the masks (saved in every checkpoint with
the rest of the optimizer state, so a resume restores them bit for bit), and every update it
returns sets each pruned weight to exactly 0 (-w where the mask is off), inside the jitted step.
A weight pruned once stays 0: its magnitude is the smallest at the next recomputation.
"""
import dataclasses
import logging
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import config_section
from research import params as params_lib
from research.errors import UserError
from research.models import layout
from research.train.feature import Feature, ResolvedModel

log = logging.getLogger(__name__)

SCOPES = ("global", "per_layer")
# The backbone's projection kernels: attention query/key/value/out and the MLP's up/gate/down.
DEFAULT_TARGETS = (r"^backbone/.*/(attention/(query|key|value|out)|mlp/(up|gate|down))/kernel$",)
REPORT_KEY = "prune/sparsity"


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """The run's `prune` section; sparsity 0 (the default) prunes nothing."""
  sparsity: float = 0.0  # the final fraction of exact zeros among the targeted weights, in [0, 1)
  scope: str = "global"  # 'global' or 'per_layer'
  targets: tuple = ()  # parameter-path regexes; () = DEFAULT_TARGETS
  start_step: int = 0  # the update where the ramp starts (sparsity 0 there)
  end_step: int = 0  # the update where it reaches `sparsity` (== start_step: at once)
  interval: int = 10  # updates between mask recomputations during the ramp

  @property
  def active(self) -> bool:
    return self.sparsity > 0

  @property
  def target_patterns(self) -> tuple:
    return tuple(self.targets) or DEFAULT_TARGETS

  def is_target(self, path: str) -> bool:
    return params_lib.matches(self.target_patterns)(path)

  @classmethod
  def from_dict(cls, d) -> "PruneConfig":
    return config_section.parse(cls, d, "prune")

  def validate(self, key: str = "prune.sparsity"):
    check_sparsity(self.sparsity, key)
    if self.scope not in SCOPES:
      raise UserError(f"prune.scope must be one of {list(SCOPES)}, got {self.scope!r}")
    if not 0 <= self.start_step <= self.end_step:
      raise UserError(f"prune.start_step ({self.start_step}) and prune.end_step "
                      f"({self.end_step}) must satisfy 0 <= start_step <= end_step")
    if self.interval < 1:
      raise UserError(f"prune.interval must be >= 1, got {self.interval}")


def check_sparsity(sparsity: float, key: str):
  if not 0 <= sparsity < 1:
    raise UserError(f"{key} must be in [0, 1), got {sparsity}")


def check_targets(cfg: PruneConfig, paths):
  """The targets name at least one parameter (else pruning would silently do nothing)."""
  if cfg.active and not any(cfg.is_target(p) for p in paths):
    raise UserError(f"prune.targets {list(cfg.target_patterns)} match no parameter of this model; "
                    f"its paths look like {', '.join(list(paths)[:2])}, ...")


def scheduled_sparsity(step, cfg: PruneConfig):
  """s(step): the cubic ramp of the module docstring (`step` may be traced)."""
  if cfg.end_step == cfg.start_step:
    return jnp.where(step >= cfg.start_step, cfg.sparsity, 0.0)
  progress = jnp.clip((step - cfg.start_step) / (cfg.end_step - cfg.start_step), 0.0, 1.0)
  return cfg.sparsity * (1.0 - (1.0 - progress) ** 3)


def mask_update_due(step, cfg: PruneConfig):
  """Whether the masks are recomputed at the update of state step `step`."""
  in_ramp = (step >= cfg.start_step) & (step <= cfg.end_step)
  return in_ramp & (((step - cfg.start_step) % cfg.interval == 0) | (step == cfg.end_step))


# ---------------------------------------------------------------------------------------------
# Masks: keep the largest magnitudes.
# ---------------------------------------------------------------------------------------------
def keep_largest(magnitudes, sparsity):
  """A bool mask of `magnitudes` (flat) keeping all but the floor(sparsity * n) smallest (ties:
  the earlier is pruned first); `sparsity` may be traced."""
  n = magnitudes.size
  order = jnp.argsort(magnitudes, stable=True)
  ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return ranks >= jnp.floor(sparsity * n).astype(jnp.int32)


def _is_stacked(path: str) -> bool:
  return path.startswith(f"backbone/{layout.STACKED}/")


def magnitude_masks(weights: dict, sparsity, scope: str) -> dict:
  """{path: bool mask} keeping the largest |w| of `weights` ({path: array}) at `sparsity`:
  over all of them ('global') or per kernel and per block of a stacked kernel ('per_layer')."""
  mags = {p: jnp.abs(w.astype(jnp.float32)) for p, w in weights.items()}
  if scope == "global":
    flat = keep_largest(jnp.concatenate([m.reshape(-1) for m in mags.values()]), sparsity)
    out, offset = {}, 0
    for p, m in mags.items():
      out[p] = flat[offset:offset + m.size].reshape(m.shape)
      offset += m.size
    return out
  out = {}
  for p, m in mags.items():
    if _is_stacked(p):  # one mask per block
      out[p] = jax.vmap(lambda b: keep_largest(b.reshape(-1), sparsity).reshape(b.shape))(m)
    else:
      out[p] = keep_largest(m.reshape(-1), sparsity).reshape(m.shape)
  return out


def _targets(tree, cfg: PruneConfig) -> dict:
  """{path: leaf} of the targeted leaves of `tree` (flax boxes kept as they are)."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  return {params_lib.path_str(p): v for p, v in leaves if cfg.is_target(params_lib.path_str(p))}


def _values(flat: dict) -> dict:
  return {p: getattr(v, "value", v) for p, v in flat.items()}


# ---------------------------------------------------------------------------------------------
# The optimizer wrapper.
# ---------------------------------------------------------------------------------------------
class PruningState(NamedTuple):
  count: jax.Array  # updates applied so far (a dropped non-finite step is not one)
  masks: Any  # the targeted parameters' tree (nested like the params), bool: True = kept
  inner: optax.OptState


def pruning(inner: optax.GradientTransformation, cfg: PruneConfig) -> optax.GradientTransformation:
  """`inner` whose updates also keep the targeted weights pruned to the schedule (see the module
  docstring); the schedule counts the updates this wrapper applied. It needs the parameters."""

  def init_fn(params):
    boxed = _targets(params, cfg)
    ones = {p: jax.tree.map(lambda v: jnp.ones(v.shape, bool), b) for p, b in boxed.items()}
    return PruningState(jnp.zeros((), jnp.int32), params_lib.unflatten(ones),
                        inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("magnitude pruning needs the parameters")
    new_updates, inner_state = inner.update(updates, state.inner, params)
    step = state.count
    weights = _values(_targets(params, cfg))
    old = params_lib.flatten(state.masks)
    masks = jax.lax.cond(
        mask_update_due(step, cfg),
        lambda: magnitude_masks(weights, scheduled_sparsity(step, cfg), cfg.scope),
        lambda: {p: old[p] for p in weights})
    pruned = {p: jnp.where(masks[p], u, -weights[p].astype(u.dtype))
              for p, u in _values(_targets(new_updates, cfg)).items()}
    new_updates = jax.tree_util.tree_map_with_path(
        lambda p, u: pruned.get(params_lib.path_str(p), u), new_updates)
    return new_updates, PruningState(step + 1, params_lib.unflatten(masks), inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# After training: one-shot pruning and the report.
# ---------------------------------------------------------------------------------------------
def prune_once(params, cfg: PruneConfig):
  """`params` (host or device arrays) with the targets pruned to `cfg.sparsity` at once."""
  weights = {p: v for p, v in params_lib.flatten(params).items() if cfg.is_target(p)}
  masks = jax.jit(lambda w: magnitude_masks(w, cfg.sparsity, cfg.scope))(weights)
  flat = params_lib.flatten(params)
  flat.update({p: np.where(np.asarray(masks[p]), np.asarray(w), 0).astype(w.dtype)
               for p, w in weights.items()})
  return params_lib.unflatten(flat)


def sparsity(params, cfg: PruneConfig) -> float:
  """The fraction of exact zeros among the targeted weights."""
  zeros = total = 0
  for p, v in params_lib.flatten(params).items():
    if cfg.is_target(p):
      v = np.asarray(v)
      zeros, total = zeros + int(v.size - np.count_nonzero(v)), total + v.size
  return zeros / max(total, 1)


def report(params, cfg: PruneConfig) -> dict:
  """The summary's `prune/sparsity` (the real one, counted in `params`), logged in one line."""
  real = sparsity(params, cfg)
  log.info("pruning: %.4f of the targeted weights are 0 (target %.4f, %s)", real, cfg.sparsity,
           cfg.scope)
  return {REPORT_KEY: real}


# ---------------------------------------------------------------------------------------------
# As a training feature (research/train/feature.py): on when prune.sparsity > 0.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prune(Feature):
  name = "prune"
  settings: PruneConfig

  @classmethod
  def section(cls) -> dict:
    return dataclasses.asdict(PruneConfig())

  @classmethod
  def of_run(cls, config) -> "Prune | None":
    settings = PruneConfig.from_dict(config.get("prune"))
    return cls(settings) if settings.active else None

  def check(self, model: ResolvedModel):
    """The targets name some parameter; not with PEFT (adapter-only checkpoints would not hold
    the pruned base weights)."""
    check_targets(self.settings, list(model.param_shapes))
    if model.model_cfg.peft.active:
      raise UserError(f"prune.sparsity={self.settings.sparsity} with peft.method="
                      f"{model.model_cfg.peft.method!r}: magnitude pruning prunes fully trained "
                      "weights; use one or the other")

  def optimizer(self, tx):
    return pruning(tx, self.settings)

  def evaluated(self, state, evaluate) -> dict:
    return {REPORT_KEY: sparsity(state.params, self.settings)}  # of the parameters evaluated

  def finish(self, params, state, workdir: str, evaluate) -> dict:
    return report(params, self.settings)  # of the parameters tested (the best ones, if kept)
