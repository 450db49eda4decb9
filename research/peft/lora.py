"""LoRA (Hu et al., 2021): a projection W x becomes W x + s B A dropout(x), with A (in x rank) and
B (rank x out) trained, W frozen, B = 0 at init (step 0 is the base model) and s = alpha / rank
(or alpha / sqrt(rank) with `rslora`).

The update lives inside `research.models.layers.Einsum`, the one projection class: a targeted
projection's parameters are `<module>/lora_a` (the kernel's input axes + rank) and
`<module>/lora_b` (rank + the kernel's output axes), beside its `kernel`. `merge` folds
s B A into the kernels (a plain base model's parameters: no extra cost at inference) and
`unmerge` takes it back out. AdaLoRA (research/peft/adalora.py) builds on the same factors, with
its singular values `<module>/lora_e` between them; `merge` folds those too.
"""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research import params as params_lib
from research.models.dropout import Dropout
from research.peft.config import PeftConfig

A, B = "lora_a", "lora_b"
E = "lora_e"  # AdaLoRA's singular values between A and B (research/peft/adalora.py)
_RANK = "z"  # the rank's letter in the update's einsums (never used by a projection)


def scale(peft: PeftConfig) -> float:
  """s: alpha / rank (alpha / sqrt(rank) with rslora); AdaLoRA: alpha / init_rank, as HF
  AdaLoRA's alpha / ranknum (ranknum is the initial rank there, unchanged by the pruning)."""
  if peft.method == "adalora":
    return peft.alpha / peft.init_rank
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


def factor_params(module: nn.Module, rank: int, a_init, b_init) -> tuple:
  """`module`'s (A, B): A (the kernel's input axes + rank), B (rank + the kernel's output axes),
  with the kernel's logical axes (created inside the `Einsum`'s compact `__call__`)."""
  n_in = len(split_equation(module.equation)[1])
  dtype = module.cfg.param_dtype
  a = module.param(A, nn.with_logical_partitioning(a_init, module.kernel_axes[:n_in] + (None,)),
                   module.kernel_shape[:n_in] + (rank,), dtype)
  b = module.param(B, nn.with_logical_partitioning(b_init, (None,) + module.kernel_axes[n_in:]),
                   (rank,) + module.kernel_shape[n_in:], dtype)
  return a, b


def through_factors(module: nn.Module, x, a, b, deterministic: bool, singular_values=None):
  """B diag(singular_values) A dropout(x) (no diag when None), unscaled, in `module`'s
  equation: x's pass-through axes + the kernel's output axes."""
  cfg = module.cfg
  x_spec, contracted, outs, kept = split_equation(module.equation)
  x = Dropout(cfg.peft.dropout)(x, deterministic=deterministic)
  x, a, b = nn.dtypes.promote_dtype(x, a, b, dtype=cfg.compute_dtype)
  h = jnp.einsum(f"{x_spec},{contracted}{_RANK}->{kept}{_RANK}", x, a)
  if singular_values is not None:
    h = h * singular_values.astype(h.dtype)
  return jnp.einsum(f"{kept}{_RANK},{_RANK}{outs}->{kept}{outs}", h, b)


def low_rank_update(module: nn.Module, x, deterministic: bool):
  """s B A dropout(x) for `module` (an `Einsum`, called inside its compact `__call__`)."""
  n_in = len(split_equation(module.equation)[1])
  # torch's Linear init for A (kaiming uniform, a = sqrt(5)): uniform(+-1 / sqrt(fan_in)).
  a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                            in_axis=tuple(range(n_in)), out_axis=-1)
  a, b = factor_params(module, module.cfg.peft.rank, a_init, nn.initializers.zeros_init())
  return through_factors(module, x, a, b, deterministic) * scale(module.cfg.peft)


def delta(a, b, s: float, kernel_ndim: int, singular_values=None):
  """s B diag(singular_values) A as a kernel: (lead..., in..., out...) from a (lead..., in..., r),
  b (lead..., r, out...) and singular_values (lead..., r) (AdaLoRA; None: LoRA).

  `lead` is the stacked-blocks axis of the scanned layout (or nothing)."""
  rank = a.shape[-1]
  n_lead = a.ndim + b.ndim - 2 - kernel_ndim
  lead, ins, outs = a.shape[:n_lead], a.shape[n_lead:-1], b.shape[n_lead + 1:]
  a2 = np.asarray(a, np.float64).reshape(lead + (int(np.prod(ins)), rank))
  if singular_values is not None:
    a2 = a2 * np.asarray(singular_values, np.float64)[..., None, :]
  b2 = np.asarray(b, np.float64).reshape(lead + (rank, int(np.prod(outs))))
  return (s * (a2 @ b2)).reshape(lead + ins + outs)


def modules(params) -> list:
  """Module paths that carry a LoRA (or AdaLoRA) update."""
  return [p[:-len(A) - 1] for p in params_lib.flatten(params) if p.endswith("/" + A)]


def _module_delta(adapters: dict, module: str, peft: PeftConfig, kernel_ndim: int):
  return delta(adapters[f"{module}/{A}"], adapters[f"{module}/{B}"], scale(peft), kernel_ndim,
               adapters.get(f"{module}/{E}"))


def merge(params, peft: PeftConfig) -> tuple[dict, dict]:
  """(merged, adapters): the base model's parameters with s B A (AdaLoRA: s B diag(E) A) added
  to each targeted kernel, and the adapter parameters taken out of them (for `unmerge`). Host
  arrays; float64 sums."""
  flat = params_lib.flatten(params)
  adapters = {p: np.asarray(v) for p, v in flat.items() if p.endswith(("/" + A, "/" + B, "/" + E))}
  merged = {p: v for p, v in flat.items() if p not in adapters}
  for module in modules(params):
    kernel = merged[f"{module}/kernel"]
    d = _module_delta(adapters, module, peft, kernel.ndim)
    merged[f"{module}/kernel"] = (np.asarray(kernel, np.float64) + d).astype(kernel.dtype)
  return params_lib.unflatten(merged), params_lib.unflatten(adapters)


def unmerge(merged, adapters, peft: PeftConfig) -> dict:
  """The inverse of `merge`: the kernels without the update, and the adapters back in place."""
  flat, extra = params_lib.flatten(merged), params_lib.flatten(adapters)
  out = dict(flat)
  for module in modules(adapters):
    kernel = flat[f"{module}/kernel"]
    d = _module_delta(extra, module, peft, kernel.ndim)
    out[f"{module}/kernel"] = (np.asarray(kernel, np.float64) - d).astype(kernel.dtype)
  out.update(extra)
  return params_lib.unflatten(out)
