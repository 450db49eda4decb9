"""What a PEFT method can act on in a given model, checked before a run writes anything.

`check_architecture(model_cfg, seq_len)` (before the model is traced) raises `UserError` in one
line for a method this architecture cannot take or a soft prompt longer than the positions left;
`check(model_cfg, shapes)` (shapes: {parameter path: shape} of the model with the method's
parameters) for a target regex that matches no projection (listing the projections there are),
a LoRA rank larger than a targeted layer, or BitFit without biases.
"""
import re

import numpy as np

from research.errors import UserError
from research.models import layers
from research.peft import prefix
from research.peft.config import is_target

PROJECTION_ROOT = "backbone/"  # projections PEFT methods adapt: every kernel of the backbone


def projections(shapes: dict) -> dict:
  """{module path: kernel shape} of the backbone's projections (the `Einsum`s)."""
  return {p[:-len("/kernel")]: tuple(s) for p, s in shapes.items()
          if p.startswith(PROJECTION_ROOT) and p.endswith("/kernel")}


def _listing(paths) -> str:
  """Module paths with block numbers folded ('backbone/layer_N/attention/query'), in order."""
  return ", ".join(dict.fromkeys(re.sub(r"layer_\d+", "layer_N", p) for p in paths))


def check_architecture(model_cfg, seq_len: int):
  """What needs no parameter shapes: run before the model is traced."""
  peft = model_cfg.peft
  n = peft.num_virtual_tokens
  if peft.method == "prefix" and prefix.refusal(layers.attention_impl(model_cfg)):
    raise UserError(prefix.refusal(layers.attention_impl(model_cfg)))
  if peft.method == "prompt" and model_cfg.kind == "decoder":
    raise UserError("peft.method=prompt needs one document per row, and decoder rows pack "
                    "several (segment_ids); use prefix, lora or ia3 for a decoder")
  last_position = model_cfg.position_offset + seq_len + n
  if (peft.method == "prompt" and model_cfg.position_embedding == "learned"
      and last_position > model_cfg.max_len):
    raise UserError(f"peft.method=prompt: data.seq_len ({seq_len}) + peft.num_virtual_tokens "
                    f"({n}) positions exceed the model's learned positions (model.max_len="
                    f"{model_cfg.max_len}); lower data.seq_len or peft.num_virtual_tokens")


def check(model_cfg, shapes: dict):
  peft = model_cfg.peft
  if peft.target_patterns and peft.method in ("lora", "adalora", "ia3"):
    modules = projections(shapes)
    for pattern in peft.target_patterns:
      if not any(re.search(pattern, m) for m in modules):
        raise UserError(f"peft.targets pattern {pattern!r} matches no projection of this model; "
                        f"its projections are {_listing(modules)}")
    if peft.method in ("lora", "adalora"):
      rank = peft.init_rank if peft.method == "adalora" else peft.rank
      layer_stack = 1 if model_cfg.scan_layers else 0
      for module, shape in modules.items():
        if not is_target(peft, module):
          continue
        fan_in, fan_out = _fans(shape[layer_stack:], module)
        if rank > min(fan_in, fan_out):
          raise UserError(f"peft rank {rank} is larger than {module} ({fan_in} -> {fan_out}); "
                          f"at most {min(fan_in, fan_out)}")
  if peft.method == "bitfit" and not any(p.endswith("bias") for p in shapes
                                         if p.startswith(PROJECTION_ROOT)):
    raise UserError("peft.method=bitfit trains biases, and this model's backbone has none "
                    f"(model.use_bias={model_cfg.use_bias}, model.norm={model_cfg.norm!r}); "
                    "pick another method")


def _fans(kernel_shape: tuple, module: str) -> tuple:
  """(input size, output size) of a projection: attention's output projection contracts
  (heads, head_dim); every other projection contracts its first axis."""
  n_in = 2 if module.endswith("attention/out") else 1
  return int(np.prod(kernel_shape[:n_in])), int(np.prod(kernel_shape[n_in:]))
