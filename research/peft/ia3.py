"""IA3 (Liu et al., 2022): learned vectors, initialised to ones, rescaling activations.

A targeted projection (`peft.targets`, default the attention's key and value and the MLP's down
projection) gets `<module>/ia3` inside `research.models.layers.Einsum`. A feed-forward target (a
path ending in `mlp/down`) scales its input: W (l * x) + b, `ia3` shaped like the contracted
axes; any other scales its output, bias included: l * (W x + b), `ia3` shaped like the output
axes (as HF PEFT's IA3 does). Step 0 is the base model. `merge` folds the vectors into the
kernels and biases: a plain model's parameters with the same outputs.
"""
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research import params as params_lib
from research.models import layout
from research.peft import lora

VECTOR = "ia3"


def is_feed_forward(module_path: str) -> bool:
  return re.search(r"mlp/down$", module_path) is not None


def _vector(module: nn.Module, shape: tuple, axes: tuple):
  return module.param(VECTOR, nn.with_logical_partitioning(nn.initializers.ones_init(), axes),
                      tuple(shape), module.cfg.param_dtype)


def scale_input(module: nn.Module, x):
  """l * x over the contracted axes of `module` (an `Einsum`, inside its `__call__`)."""
  x_spec, contracted, _, _ = lora.split_equation(module.equation)
  n = len(contracted)
  v = _vector(module, module.kernel_shape[:n], module.kernel_axes[:n])
  return jnp.einsum(f"{x_spec},{contracted}->{x_spec}", x, v.astype(x.dtype))


def scale_output(module: nn.Module, y):
  """l * y over the output axes of `module` (an `Einsum`, inside its `__call__`)."""
  _, contracted, outs, _ = lora.split_equation(module.equation)
  n = len(contracted)
  v = _vector(module, module.kernel_shape[n:], module.kernel_axes[n:])
  y_spec = module.equation.split("->")[1]
  return jnp.einsum(f"{y_spec},{outs}->{y_spec}", y, v.astype(y.dtype))


def merge(params) -> dict:
  """The parameters of the same model without IA3 (`peft.method='none'`): each vector folded
  into its projection's kernel (and, for output scaling, bias). Host arrays; float64 products."""
  flat = params_lib.flatten(params)
  suffix = "/" + VECTOR
  merged = {p: v for p, v in flat.items() if not p.endswith(suffix)}
  for path in (p for p in flat if p.endswith(suffix)):
    module = path[:-len(suffix)]
    v = np.asarray(flat[path], np.float64)
    kernel = merged[f"{module}/kernel"]
    if is_feed_forward(module):  # (lead..., in...) against (lead..., in..., out...)
      factor = v.reshape(v.shape + (1,) * (kernel.ndim - v.ndim))
    else:  # (lead..., out...) against (lead..., in..., out...)
      n_lead = 1 if layout.STACKED in module.split("/") else 0
      factor = v.reshape(v.shape[:n_lead] + (1,) * (kernel.ndim - v.ndim) + v.shape[n_lead:])
      bias = merged.get(f"{module}/bias")
      if bias is not None:
        merged[f"{module}/bias"] = (np.asarray(bias, np.float64) * v).astype(bias.dtype)
    merged[f"{module}/kernel"] = (np.asarray(kernel, np.float64) * factor).astype(kernel.dtype)
  return params_lib.unflatten(merged)
