"""AdaLoRA (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning").

A targeted projection W x becomes W x + s Q diag(E) P dropout(x) in the paper's SVD form, with
our kernels' (input, output) order: P = `<module>/lora_a` (the kernel's input axes + init_rank),
E = `<module>/lora_e` (init_rank,) the singular values, zeros at init (step 0 is the base model),
Q = `<module>/lora_b` (init_rank + the kernel's output axes); P and Q start as normal(0, 0.02)
(as HF PEFT's AdaLoRA). s = alpha / init_rank: HF AdaLoRA's alpha / ranknum, whose ranknum is the
initial rank and does not change as singular values are pruned. The factors and their einsums
are LoRA's (research/peft/lora.py), which also merges this update into the kernels.

The rank budget: `rank_allocation` wraps the optimizer. Its state holds, for every entry of P, E
and Q, the sensitivity I = EMA_beta1 |w * grad| and its uncertainty U = EMA_beta2 |I_now - I|;
triplet i of a module scores S_i = s(E_i) + mean_j s(P_ji) + mean_j s(Q_ij), s = I * U. The total
kept rank (over all modules) follows the paper's cubic schedule `budget`: init_rank per module up
to update `adalora_warmup`, then b(T) + (b(0) - b(T)) (1 - (t - t_i) / (T - t_f - t_i))^3 until
update T - t_f (T = train.steps, t_f = `adalora_final`), rank per module on average after. Every
`adalora_interval` updates of that span, and at its last one, the updates zero the E entries
below one global threshold over all modules (the lowest-scoring ones beyond the budget); the
mask made at T - t_f is then applied at every later update. Pruned entries keep training between
masks and come back if their score rises, as in the paper. Everything runs inside the jitted
step. `orthogonality` is the paper's regulariser orth_weight * sum_k |P^T P - I|_F^2 +
|Q Q^T - I|_F^2 (HF PEFT takes the mean of unsquared norms instead). `ranks` counts each
module's non-zero singular values: the rank it kept.
"""
import logging
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import params as params_lib
from research.errors import UserError
from research.models import layout
from research.objectives import Regularizer
from research.peft import lora
from research.peft.config import PeftConfig

log = logging.getLogger(__name__)

FACTORS = (lora.A, lora.E, lora.B)  # P, E, Q of one module, in this order everywhere below
REGULARIZER = "orthogonality"  # logged as train/orthogonality


def svd_update(module: nn.Module, x, deterministic: bool):
  """s Q diag(E) P dropout(x) for `module` (an `Einsum`, inside its compact `__call__`)."""
  peft = module.cfg.peft
  factor_init = nn.initializers.normal(0.02)
  p, q = lora.factor_params(module, peft.init_rank, factor_init, factor_init)
  e = module.param(lora.E, nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                   (peft.init_rank,), module.cfg.param_dtype)
  return lora.through_factors(module, x, p, q, deterministic, e) * lora.scale(peft)


def triplets(tree) -> dict:
  """{module path: (P, E, Q)} of the AdaLoRA modules in `tree` (parameters, gradients, updates
  or statistics shaped like them; flax boxes are kept as they are), in the tree's order."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  flat = {params_lib.path_str(p): v for p, v in leaves}
  suffix = "/" + lora.E
  return {p[:-len(suffix)]: tuple(flat[p[:-len(suffix)] + "/" + f] for f in FACTORS)
          for p in flat if p.endswith(suffix)}


# ---------------------------------------------------------------------------------------------
# The budget schedule and the importance-based masking, as an optimizer wrapper.
# ---------------------------------------------------------------------------------------------
def check_schedule(peft: PeftConfig, total_steps: int):
  """The schedule needs updates to shrink the budget in: warmup + final < train.steps."""
  for field in ("adalora_warmup", "adalora_final"):
    if getattr(peft, field) < 0:
      raise UserError(f"peft.{field} must be >= 0, got {getattr(peft, field)}")
  if peft.adalora_warmup + peft.adalora_final >= total_steps:
    raise UserError(f"peft.adalora_warmup ({peft.adalora_warmup}) + peft.adalora_final "
                    f"({peft.adalora_final}) must be < train.steps ({total_steps}): the AdaLoRA "
                    "budget shrinks between them")


def budget(step, peft: PeftConfig, n_modules: int, total_steps: int):
  """The total rank b(t) kept after update `step` (numbered from 1), as int32 (`step` may be
  traced): init_rank * n_modules up to `adalora_warmup`, the cubic decrease, floored, then
  rank * n_modules from update total_steps - `adalora_final` on."""
  start, end = peft.init_rank * n_modules, peft.rank * n_modules
  t_init, t_end = peft.adalora_warmup, total_steps - peft.adalora_final
  remaining = jnp.clip((t_end - step) / (t_end - t_init), 0.0, 1.0)
  return (end + jnp.floor((start - end) * remaining ** 3)).astype(jnp.int32)


class RankAllocationState(NamedTuple):
  count: jax.Array  # updates applied so far
  sensitivity: Any  # per module (P, E, Q): EMA (beta1) of |w * grad|
  uncertainty: Any  # per module (P, E, Q): EMA (beta2) of |(|w * grad|) - sensitivity|
  final_keep: jax.Array  # (n_modules * init_rank,) bool: the mask fixed at the schedule's end
  inner: optax.OptState


def triplet_scores(sensitivity, uncertainty):
  """Every triplet's importance, modules concatenated in order: s(E_i) + mean_j s(P_ji) +
  mean_j s(Q_ij), s = sensitivity * uncertainty, per block of a stacked module."""
  scores = []
  for (sp, se, sq), (up, ue, uq) in zip(sensitivity, uncertainty):
    n_lead = se.ndim - 1  # the stacked-blocks axis of the scanned layout, or none
    p = (sp * up).mean(axis=tuple(range(n_lead, sp.ndim - 1)))
    q = (sq * uq).mean(axis=tuple(range(n_lead + 1, sq.ndim)))
    scores.append((se * ue + p + q).reshape(-1))
  return jnp.concatenate(scores)


def top(scores, k):
  """A bool mask of the `k` highest scores (ties: the earlier first); `k` may be traced."""
  order = jnp.argsort(-scores, stable=True)
  return jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size)) < k


def rank_allocation(inner: optax.GradientTransformation, peft: PeftConfig,
                    total_steps: int) -> optax.GradientTransformation:
  """`inner` (the optimizer) whose updates also prune AdaLoRA's singular values to the budget
  (see the module docstring). It reads the raw gradients and needs the parameters."""
  check_schedule(peft, total_steps)
  t_end = total_steps - peft.adalora_final

  def init_fn(params):
    modules = triplets(params)
    zeros = tuple(tuple(jax.tree.map(jnp.zeros_like, f) for f in t) for t in modules.values())
    size = sum(int(np.prod(jax.tree.leaves(e)[0].shape)) for _, e, _ in modules.values())
    return RankAllocationState(jnp.zeros((), jnp.int32), zeros, zeros,
                               jnp.ones((size,), bool), inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("AdaLoRA's rank allocation needs the parameters")
    weights, grads = triplets(params), triplets(updates)
    b1, b2 = peft.beta1, peft.beta2
    sensitivity, uncertainty = [], []
    for w3, g3, s3, u3 in zip(weights.values(), grads.values(), state.sensitivity,
                              state.uncertainty):
      now = [jnp.abs(w * g).astype(jnp.float32) for w, g in zip(w3, g3)]
      s3 = tuple(b1 * s + (1 - b1) * n for s, n in zip(s3, now))
      sensitivity.append(s3)
      uncertainty.append(tuple(b2 * u + (1 - b2) * jnp.abs(n - s)
                               for u, n, s in zip(u3, now, s3)))
    new_updates, inner_state = inner.update(updates, state.inner, params)

    step = state.count + 1
    n_modules = state.final_keep.size // peft.init_rank
    keep_now = top(triplet_scores(sensitivity, uncertainty),
                   budget(step, peft, n_modules, total_steps))
    scheduled = (step > peft.adalora_warmup) & (step < t_end) & (step % peft.adalora_interval == 0)
    keep = jnp.where(step > t_end, state.final_keep, keep_now)
    masking = scheduled | (step >= t_end)
    final_keep = jnp.where(step == t_end, keep_now, state.final_keep)

    # E's update: -E where an entry is pruned (E + update is exactly 0), else the optimizer's.
    e_updates, offset = {}, 0
    for (module, (_, e, _)), (_, u, _) in zip(weights.items(), triplets(new_updates).values()):
      kept = keep[offset:offset + e.size].reshape(e.shape)
      e_updates[f"{module}/{lora.E}"] = jnp.where(masking & ~kept, -e, u)
      offset += e.size
    new_updates = jax.tree_util.tree_map_with_path(
        lambda p, u: e_updates.get(params_lib.path_str(p), u), new_updates)
    return new_updates, RankAllocationState(step, tuple(sensitivity), tuple(uncertainty),
                                            final_keep, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# The orthogonality regulariser and the rank report.
# ---------------------------------------------------------------------------------------------
def orthogonality(params):
  """sum over modules (and blocks) of |P^T P - I|_F^2 + |Q Q^T - I|_F^2 (unweighted)."""
  total = jnp.zeros((), jnp.float32)
  for p, e, q in triplets(params).values():
    lead, rank = e.shape[:-1], e.shape[-1]
    p = p.astype(jnp.float32).reshape(lead + (-1, rank))
    q = q.astype(jnp.float32).reshape(lead + (rank, -1))
    eye = jnp.eye(rank, dtype=jnp.float32)
    total += ((jnp.einsum("...ir,...is->...rs", p, p) - eye) ** 2).sum()
    total += ((jnp.einsum("...ri,...si->...rs", q, q) - eye) ** 2).sum()
  return total


def regularizers(peft: PeftConfig) -> tuple:
  """The loss terms of the parameters `peft`'s method adds: AdaLoRA's orthogonality (unless its
  weight is 0), else none."""
  if peft.method != "adalora" or not peft.orth_weight:
    return ()
  weight = peft.orth_weight
  return (Regularizer(REGULARIZER, lambda params, _: weight * orthogonality(params)),)


def ranks(params) -> dict:
  """{module path: its number of non-zero singular values}: the rank each AdaLoRA module kept.
  A stacked (scanned) module is reported per block, under the block's unrolled path."""
  es = {p: np.asarray(v) for p, v in params_lib.flatten(params).items()
        if p.endswith("/" + lora.E)}
  blocks = params_lib.flatten(layout.unstack_layers(params_lib.unflatten(es)))
  return {p[:-len(lora.E) - 1]: int(np.count_nonzero(v)) for p, v in blocks.items()}


def report(params, peft: PeftConfig) -> dict:
  """The summary's rank entries (`peft/rank/<module>`, `peft/rank_total`), logged in one line."""
  kept = ranks(params)
  total = sum(kept.values())
  log.info("AdaLoRA ranks: %d kept of %d (target %d = %d per module x %d modules): %s", total,
           peft.init_rank * len(kept), peft.rank * len(kept), peft.rank, len(kept),
           ", ".join(f"{m} {k}" for m, k in kept.items()))
  return {**{f"peft/rank/{m}": k for m, k in kept.items()}, "peft/rank_total": total}
