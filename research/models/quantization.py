"""Int8 projections: what `layers.Einsum` computes under `model.quantization`.

Modes (`ModelConfig.quantization`):
  none          float kernels, float matmuls.
  int8_weights  `kernel` is int8 with a float32 `kernel_scale` per output channel; the matmul
                reads the int8 kernel inside the jitted dot (converted to the compute dtype there)
                and rescales its output: y = (x . q) * scale. Saves memory and disk, not compute.
  int8          weights as above, and the input is quantized to int8 with a static per-tensor
                `input_scale` (calibrated, `research/compress/quantize.py`): the matmul is
                int8 x int8 -> int32 (`dot_general(..., preferred_element_type=int32)`), rescaled
                by input_scale * kernel_scale.
  qat           quantization-aware training: float kernels, fake-quantized per output channel in
                the forward pass (round to the int8 grid and back), with straight-through
                gradients (the rounding counts as the identity in the backward pass).

Per-channel symmetric: scale = max|w| / 127 over the kernel's contracted axes (those whose
letters the equation sums over), so q = round(w / scale) lies in [-127, 127] and |w - q scale| <=
scale / 2 elementwise. `kernel_scale` keeps the kernel's rank (1 on contracted axes), so
`dequantize(q, scale) = q * scale` whatever the layout (a stacked layer axis included).
"""
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("none", "int8_weights", "int8", "qat")
INT8_MODES = ("int8_weights", "int8")  # modes whose kernels are int8 (inference only)
QMAX = 127


def _operands(equation: str) -> tuple:
  """(input letters, kernel letters, output letters) of 'x,k->y'."""
  if "..." in equation or "->" not in equation:
    raise ValueError(f"int8 projections need an explicit einsum equation, got {equation!r}")
  inputs, out = equation.split("->")
  x, kernel = inputs.split(",")
  return x, kernel, out


def contracted_axes(equation: str) -> tuple:
  """The kernel axes the equation sums over (its letters absent from the output)."""
  _, kernel, out = _operands(equation)
  return tuple(i for i, c in enumerate(kernel) if c not in out)


def scale_shape(equation: str, kernel_shape: tuple) -> tuple:
  """`kernel_scale`'s shape: the kernel's, with 1 on the contracted axes."""
  contracted = contracted_axes(equation)
  return tuple(1 if i in contracted else d for i, d in enumerate(kernel_shape))


def channel_scale(w, keep_shape: tuple):
  """max|w| / 127 over the axes where `keep_shape` is 1 (kept dims), float32; 1 where a
  channel is all zeros (its int8 values are 0 whatever the scale)."""
  w = np.asarray(w, np.float32)
  axes = tuple(i for i, d in enumerate(keep_shape) if d == 1)
  absmax = np.abs(w).max(axis=axes, keepdims=True)
  return np.where(absmax > 0, absmax / QMAX, 1.0).astype(np.float32)


def quantize(w, scale):
  """int8 q = clip(round(w / scale), -127, 127)."""
  return jnp.clip(jnp.round(jnp.asarray(w, jnp.float32) / scale), -QMAX, QMAX).astype(jnp.int8)


def dequantize(q, scale):
  return q.astype(jnp.float32) * scale


def fake_quantize(w, equation: str):
  """w rounded to its per-channel int8 grid in the forward pass; gradient = identity (STE)."""
  axes = contracted_axes(equation)
  scale = jnp.max(jnp.abs(w), axis=axes, keepdims=True) / QMAX
  scale = jax.lax.stop_gradient(jnp.where(scale > 0, scale, 1.0))
  rounded = jnp.clip(jnp.round(w / scale), -QMAX, QMAX) * scale
  return w + jax.lax.stop_gradient(rounded - w)


def quantize_input(x, input_scale):
  """Per-tensor symmetric int8 of an activation with a static scale (saturating)."""
  return jnp.clip(jnp.round(x.astype(jnp.float32) / input_scale), -QMAX, QMAX).astype(jnp.int8)


def output_scale(equation: str, kernel_scale):
  """`kernel_scale` laid out to broadcast against the einsum's output."""
  _, kernel, out = _operands(equation)
  kept = "".join(c for c in kernel if c in out)
  in_out_order = "".join(c for c in out if c in kept)
  squeezed = kernel_scale.reshape([d for c, d in zip(kernel, kernel_scale.shape) if c in out])
  ordered = jnp.einsum(f"{kept}->{in_out_order}", squeezed)
  dims = iter(ordered.shape)
  return ordered.reshape([next(dims) if c in kept else 1 for c in out])


def int8_einsum(equation: str, x, kernel, kernel_scale, input_scale, dtype):
  """einsum(equation, x, kernel * kernel_scale) from the int8 `kernel`, in `dtype`.

  With `input_scale` (mode int8) x is quantized and the dot is int8 x int8 -> int32; without
  (int8_weights) the int8 kernel enters the dot and is converted there."""
  if input_scale is None:
    y = jnp.einsum(equation, x.astype(dtype), kernel, preferred_element_type=dtype)
    return (y * output_scale(equation, kernel_scale).astype(dtype)).astype(dtype)
  acc = jnp.einsum(equation, quantize_input(x, input_scale), kernel,
                   preferred_element_type=jnp.int32)
  rescale = input_scale * output_scale(equation, kernel_scale)
  return (acc.astype(jnp.float32) * rescale).astype(dtype)
