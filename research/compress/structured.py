"""Structured pruning: remove whole attention heads and feed-forward neurons, shrinking the
matrices (a smaller, faster model of the same architecture, not a sparser one).

Every block loses the same number of heads and of neurons, so the result is one `ModelConfig`
(num_heads and mlp_dim smaller, `attention_head_dim` kept explicitly). Importance is read from
the weights alone (no data): a head's is |W_V[:, h]|_F |W_O[h]|_F (the Frobenius norms of its
value projection and of its rows of the output projection, whose product bounds how much the
head can add to the residual stream), a neuron's |W_up[:, j]| |W_down[j]| (times |W_gate[:, j]|
with a gated MLP); each block keeps its most important ones, in their original order.
`zero_pruned` is the same pruning done by zeroing (the full-size model with the removed heads'
output rows and the removed neurons' down rows at 0): it computes the same function as the
shrunk model, which the tests check. Grouped-query attention is refused (a head shares its keys
and values with the rest of its group).
"""
import dataclasses

import numpy as np

from research.errors import UserError
from research.models import layout
from research.models.config import ModelConfig

ATTENTION_IN = ("query", "key", "value")  # kernels (embed, heads, head_dim), biases (heads, head_dim)
MLP_IN = ("up", "gate")  # kernels (embed, mlp), biases (mlp)


def removed_count(amount: float, total: int, what: str, flag: str) -> int:
  """How many of a block's `total` heads (neurons) `amount` removes: a fraction in [0, 1)
  (rounded to the nearest count) or a whole count; at least one must remain (else UserError)."""
  if amount < 0 or (amount >= 1 and amount != int(amount)):
    raise UserError(f"--{flag} must be a fraction in [0, 1) or a whole count, got {amount}")
  count = int(round(amount * total)) if amount < 1 else int(amount)
  if count >= total:
    raise UserError(f"--{flag}={amount} removes {count} of the {total} {what} of each layer: at "
                    f"least one must remain (at most {total - 1}, or a fraction below "
                    f"{(total - 0.5) / total:.3f})")
  return count


def check_model(cfg: ModelConfig):
  if cfg.kv_heads != cfg.num_heads:
    raise UserError(f"structured pruning of grouped-query attention (num_kv_heads={cfg.kv_heads}, "
                    f"num_heads={cfg.num_heads}) is not supported: a head shares its keys and "
                    "values with its group")
  if cfg.peft.active:
    raise UserError(f"the model has {cfg.peft.method} adapters (peft.method): structured pruning "
                    "reads plain weights; merge or export them first")


def head_importance(block) -> np.ndarray:
  """(heads,): |W_V[:, h]|_F |W_O[h]|_F."""
  att = block["attention"]
  value = np.asarray(att["value"]["kernel"], np.float64)
  out = np.asarray(att["out"]["kernel"], np.float64)
  return np.sqrt((value ** 2).sum(axis=(0, 2)) * (out ** 2).sum(axis=(1, 2)))


def neuron_importance(block) -> np.ndarray:
  """(mlp,): |W_up[:, j]| |W_down[j]| (times |W_gate[:, j]| if gated)."""
  mlp = block["mlp"]
  score = np.sqrt((np.asarray(mlp["down"]["kernel"], np.float64) ** 2).sum(axis=1))
  for name in MLP_IN:
    if name in mlp:
      score = score * np.sqrt((np.asarray(mlp[name]["kernel"], np.float64) ** 2).sum(axis=0))
  return score


def most_important(scores: np.ndarray, remove: int) -> np.ndarray:
  """The indices kept: all but the `remove` lowest scores (ties: the later goes), ascending."""
  order = np.argsort(-scores, kind="stable")
  return np.sort(order[:scores.size - remove])


def _take(tree: dict, axis_of: dict, keep: np.ndarray) -> dict:
  """`tree` (a module's {'kernel', 'bias'}) with `keep` taken along each parameter's axis in
  `axis_of` ({'kernel': axis, 'bias': axis or None}: None leaves it whole)."""
  out = dict(tree)
  for name, axis in axis_of.items():
    if name in tree and axis is not None:
      out[name] = np.take(np.asarray(tree[name]), keep, axis=axis)
  return out


def shrink_block(block: dict, heads: np.ndarray, neurons: np.ndarray) -> dict:
  """One block keeping only heads `heads` and neurons `neurons` (index arrays)."""
  att, mlp = dict(block["attention"]), dict(block["mlp"])
  for name in ATTENTION_IN:
    att[name] = _take(att[name], {"kernel": 1, "bias": 0}, heads)
  att["out"] = _take(att["out"], {"kernel": 0, "bias": None}, heads)
  for name in MLP_IN:
    if name in mlp:
      mlp[name] = _take(mlp[name], {"kernel": 1, "bias": 0}, neurons)
  mlp["down"] = _take(mlp["down"], {"kernel": 0, "bias": None}, neurons)
  return {**block, "attention": att, "mlp": mlp}


def zero_block(block: dict, heads: np.ndarray, neurons: np.ndarray) -> dict:
  """One full-size block whose heads outside `heads` and neurons outside `neurons` contribute
  nothing: their rows of the output (down) projection are 0."""
  att, mlp = dict(block["attention"]), dict(block["mlp"])
  out, down = np.array(att["out"]["kernel"]), np.array(mlp["down"]["kernel"])
  out[np.setdiff1d(np.arange(out.shape[0]), heads)] = 0
  down[np.setdiff1d(np.arange(down.shape[0]), neurons)] = 0
  att["out"] = {**att["out"], "kernel": out}
  mlp["down"] = {**mlp["down"], "kernel": down}
  return {**block, "attention": att, "mlp": mlp}


def kept_units(params, cfg: ModelConfig, remove_heads: int, remove_neurons: int) -> list:
  """[(heads kept, neurons kept)] per block, by importance."""
  blocks = layout.unstack_layers(params)["backbone"]
  return [(most_important(head_importance(b), remove_heads),
           most_important(neuron_importance(b), remove_neurons))
          for b in (blocks[layout.unrolled_name(i)] for i in range(cfg.num_layers))]


def _per_block(params, cfg: ModelConfig, kept: list, fn) -> dict:
  unrolled = layout.unstack_layers(params)
  backbone = dict(unrolled["backbone"])
  for i, (heads, neurons) in enumerate(kept):
    name = layout.unrolled_name(i)
    backbone[name] = fn(backbone[name], heads, neurons)
  return layout.as_layout({**unrolled, "backbone": backbone}, cfg.scan_layers)


def zero_pruned(params, cfg: ModelConfig, kept: list) -> dict:
  """The full-size parameters with the units outside `kept` switched off (see `zero_block`)."""
  return _per_block(params, cfg, kept, zero_block)


def prune(params, cfg: ModelConfig, remove_heads: int, remove_neurons: int):
  """(params, cfg) of the model without the `remove_heads` least important heads and the
  `remove_neurons` least important neurons of every block."""
  check_model(cfg)
  kept = kept_units(params, cfg, remove_heads, remove_neurons)
  smaller = dataclasses.replace(cfg, num_heads=cfg.num_heads - remove_heads,
                                num_kv_heads=0, attention_head_dim=cfg.head_dim,
                                mlp_dim=cfg.mlp_dim - remove_neurons)
  return _per_block(params, cfg, kept, shrink_block), smaller
