"""LoRA (Hu et al., 2021): a projection W x becomes W x + s B A dropout(x), with A (in x rank) and
B (rank x out) trained, W frozen, B = 0 at init (step 0 is the base model) and s = alpha / rank
(or alpha / sqrt(rank) with `rslora`).

The update lives inside `research.models.layers.Einsum`, the one projection class: a targeted
projection's parameters are `<module>/lora_a` (the kernel's input axes + rank) and
`<module>/lora_b` (rank + the kernel's output axes), beside its `kernel`. `merge` folds
s B A into the kernels (a plain base model's parameters: no extra cost at inference) and
`unmerge` takes it back out.
"""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research import params as params_lib
from research.peft.config import PeftConfig

A, B = "lora_a", "lora_b"
_RANK = "z"  # the rank's letter in the update's einsums (never used by a projection)


def scale(peft: PeftConfig) -> float:
  return peft.alpha / (math.sqrt(peft.rank) if peft.rslora else peft.rank)


def split_equation(equation: str) -> tuple:
  """'btd,dhk->bthk' -> ('btd', 'd', 'hk', 'bt'): input, contracted axes (first in the kernel),
  output axes, and the input axes that pass through."""
  inputs, out = equation.split("->")
  x_spec, k_spec = inputs.split(",")
  contracted = "".join(c for c in k_spec if c in x_spec and c not in out)
  if not k_spec.startswith(contracted) or _RANK in equation:
    raise ValueError(f"LoRA needs the kernel's contracted axes first: {equation!r}")
  return x_spec, contracted, k_spec[len(contracted):], "".join(c for c in x_spec if c not in contracted)


def low_rank_update(module: nn.Module, x, deterministic: bool):
  """s B A dropout(x) for `module` (an `Einsum`, called inside its compact `__call__`)."""
  cfg, peft = module.cfg, module.cfg.peft
  x_spec, contracted, outs, kept = split_equation(module.equation)
  n_in = len(contracted)
  fan_in_axes = tuple(range(n_in))
  # torch's Linear init for A (kaiming uniform, a = sqrt(5)): uniform(+-1 / sqrt(fan_in)).
  a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=fan_in_axes,
                                            out_axis=-1)
  a = module.param(A, nn.with_logical_partitioning(a_init, module.kernel_axes[:n_in] + (None,)),
                   module.kernel_shape[:n_in] + (peft.rank,), cfg.param_dtype)
  b = module.param(B, nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                   (None,) + module.kernel_axes[n_in:]),
                   (peft.rank,) + module.kernel_shape[n_in:], cfg.param_dtype)
  x = nn.Dropout(peft.dropout)(x, deterministic=deterministic)
  x, a, b = nn.dtypes.promote_dtype(x, a, b, dtype=cfg.compute_dtype)
  h = jnp.einsum(f"{x_spec},{contracted}{_RANK}->{kept}{_RANK}", x, a)
  return jnp.einsum(f"{kept}{_RANK},{_RANK}{outs}->{kept}{outs}", h, b) * scale(peft)


def delta(a, b, s: float, kernel_ndim: int):
  """s B A as a kernel: (lead..., in..., out...) from a (lead..., in..., r), b (lead..., r, out...).

  `lead` is the stacked-blocks axis of the scanned layout (or nothing)."""
  rank = a.shape[-1]
  n_lead = a.ndim + b.ndim - 2 - kernel_ndim
  lead, ins, outs = a.shape[:n_lead], a.shape[n_lead:-1], b.shape[n_lead + 1:]
  a2 = np.asarray(a, np.float64).reshape(lead + (int(np.prod(ins)), rank))
  b2 = np.asarray(b, np.float64).reshape(lead + (rank, int(np.prod(outs))))
  return (s * (a2 @ b2)).reshape(lead + ins + outs)


def modules(params) -> list:
  """Module paths that carry a LoRA update."""
  return [p[:-len(A) - 1] for p in params_lib.flatten(params) if p.endswith("/" + A)]


def merge(params, peft: PeftConfig) -> tuple[dict, dict]:
  """(merged, adapters): the base model's parameters with s B A added to each targeted kernel,
  and the LoRA parameters taken out of them (for `unmerge`). Host arrays; float64 sums."""
  flat = params_lib.flatten(params)
  adapters = {p: np.asarray(v) for p, v in flat.items() if p.endswith(("/" + A, "/" + B))}
  merged = {p: v for p, v in flat.items() if p not in adapters}
  for module in modules(params):
    kernel = merged[f"{module}/kernel"]
    d = delta(adapters[f"{module}/{A}"], adapters[f"{module}/{B}"], scale(peft), kernel.ndim)
    merged[f"{module}/kernel"] = (np.asarray(kernel, np.float64) + d).astype(kernel.dtype)
  return params_lib.unflatten(merged), params_lib.unflatten(adapters)


def unmerge(merged, adapters, peft: PeftConfig) -> dict:
  """The inverse of `merge`: the kernels without s B A, and the LoRA parameters back in place."""
  flat, extra = params_lib.flatten(merged), params_lib.flatten(adapters)
  out = dict(flat)
  for module in modules(adapters):
    kernel = flat[f"{module}/kernel"]
    d = delta(extra[f"{module}/{A}"], extra[f"{module}/{B}"], scale(peft), kernel.ndim)
    out[f"{module}/kernel"] = (np.asarray(kernel, np.float64) - d).astype(kernel.dtype)
  out.update(extra)
  return params_lib.unflatten(out)
