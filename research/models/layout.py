"""The two layouts of the Transformer blocks' parameters, and conversion between them.

Unrolled (`model.scan_layers=False`): one subtree per block, backbone/layer_0/..., layer_1/...
Stacked (`model.scan_layers=True`): one subtree backbone/layers/... whose arrays carry a leading
axis of length num_layers (block i at index i), as `nn.scan` over the blocks creates them.

What reads weights saved by another model converts with these (`init.weights`, Hugging Face
import and export), so either layout reads into either model; the layout is detected from the
tree, and nothing else about the parameters changes. A workdir's own readers (a resume,
`research.predict`) build the model from that workdir's config, whose `scan_layers` is the
layout its checkpoints hold.
"""
import re

import jax
import numpy as np

STACKED = "layers"  # the stacked blocks' subtree, and the logical name of its leading axis
_UNROLLED = re.compile(r"layer_(\d+)$")


def unrolled_name(index: int) -> str:
  """The subtree of block `index` in the unrolled layout."""
  return f"layer_{index}"


def is_stacked(params) -> bool:
  return STACKED in params.get("backbone", {})


def stack_layers(params) -> dict:
  """Unrolled -> stacked: backbone/layer_<i>/... become backbone/layers/... with block i at
  index i of a new leading axis. A stacked tree is returned as it is."""
  if is_stacked(params):
    return params
  backbone = dict(params["backbone"])
  blocks = sorted((int(m.group(1)), name) for name in backbone
                  for m in [_UNROLLED.match(name)] if m)
  if [i for i, _ in blocks] != list(range(len(blocks))):
    raise ValueError(f"blocks are not numbered 0..n-1: {[name for _, name in blocks]}")
  trees = [backbone.pop(name) for _, name in blocks]
  backbone[STACKED] = jax.tree.map(lambda *leaves: np.stack([np.asarray(l) for l in leaves]),
                                   *trees)
  return {**params, "backbone": backbone}


def unstack_layers(params) -> dict:
  """Stacked -> unrolled (the inverse of `stack_layers`). An unrolled tree is returned as is."""
  if not is_stacked(params):
    return params
  backbone = dict(params["backbone"])
  stacked = backbone.pop(STACKED)
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(num_layers):
    backbone[unrolled_name(i)] = jax.tree.map(lambda a, i=i: np.asarray(a[i]), stacked)
  return {**params, "backbone": backbone}


def as_layout(params, scan_layers: bool) -> dict:
  """`params` (either layout) in the layout of a model with `model.scan_layers=scan_layers`."""
  return stack_layers(params) if scan_layers else unstack_layers(params)
