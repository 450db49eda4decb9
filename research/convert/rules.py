"""Tensor correspondence rules between a Hugging Face state dict and our parameter tree.

A `Rule` ties one HF tensor to one or more of our parameters (GPT-2 keeps query, key and value in
one fused tensor) with a function each way. Architectures (`research.convert.architectures`)
list their rules with the helpers below; `research.convert.hf` applies them in both directions.
Our paths are '/'-joined (e.g. 'backbone/layer_0/attention/query/kernel').
"""
import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # tensor name, without the task-model prefix ('bert.', 'transformer.', 'model.')
  ours: tuple  # our parameter paths
  to_ours: Callable  # hf array -> tuple of our arrays
  to_hf: Callable  # our arrays -> hf array
  prefixed: bool = True  # lives under the task-model prefix (backbone) or not (heads)


def same(hf, ours, prefixed=True):
  return Rule(hf, (ours,), lambda a: (a,), lambda a: a, prefixed)


def linear(hf, ours, bias=True, prefixed=True):
  """torch.nn.Linear (weight: out x in) <-> our kernel (in x out) and bias."""
  rules = [Rule(f"{hf}.weight", (f"{ours}/kernel",), lambda w: (w.T,), lambda k: k.T, prefixed)]
  if bias:
    rules.append(same(f"{hf}.bias", f"{ours}/bias", prefixed))
  return rules


def to_heads(hf, ours, heads, head_dim, bias=True):
  """Linear hidden -> heads x head_dim (query/key/value) <-> kernel (hidden, heads, head_dim)."""
  rules = [Rule(f"{hf}.weight", (f"{ours}/kernel",),
                lambda w: (w.T.reshape(w.shape[1], heads, head_dim),),
                lambda k: k.reshape(k.shape[0], -1).T)]
  if bias:
    rules.append(Rule(f"{hf}.bias", (f"{ours}/bias",), lambda b: (b.reshape(heads, head_dim),),
                      lambda b: b.reshape(-1)))
  return rules


def from_heads(hf, ours, heads, head_dim, bias=True):
  """Linear heads x head_dim -> hidden (attention output) <-> kernel (heads, head_dim, hidden)."""
  rules = [Rule(f"{hf}.weight", (f"{ours}/kernel",),
                lambda w: (w.T.reshape(heads, head_dim, w.shape[0]),),
                lambda k: k.reshape(-1, k.shape[-1]).T)]
  if bias:
    rules.append(same(f"{hf}.bias", f"{ours}/bias"))
  return rules


def norm(hf, ours, bias=True, prefixed=True, weight="weight", bias_name="bias"):
  rules = [same(f"{hf}.{weight}", f"{ours}/scale", prefixed)]
  if bias:
    rules.append(same(f"{hf}.{bias_name}", f"{ours}/bias", prefixed))
  return rules


def conv1d(hf, ours):
  """GPT-2's Conv1D stores weight as in x out: the same layout as our kernels."""
  return [same(f"{hf}.weight", f"{ours}/kernel"), same(f"{hf}.bias", f"{ours}/bias")]


def conv1d_to_heads(hf, ours, heads, head_dim):
  """GPT-2's conv1d (in, out) <-> our (in, heads, head_dim) kernel."""
  return [Rule(f"{hf}.weight", (f"{ours}/kernel",),
               lambda w: (w.reshape(w.shape[0], heads, head_dim),),
               lambda k: k.reshape(k.shape[0], -1)),
          Rule(f"{hf}.bias", (f"{ours}/bias",), lambda b: (b.reshape(heads, head_dim),),
               lambda b: b.reshape(-1))]


def fused_qkv(hf, ours_prefix, heads, head_dim):
  """GPT-2's c_attn: one (hidden, 3 x hidden) conv1d <-> our query, key and value."""
  names = [f"{ours_prefix}/{n}" for n in ("query", "key", "value")]

  def split_w(w):
    return tuple(p.reshape(w.shape[0], heads, head_dim) for p in np.split(w, 3, axis=1))

  def split_b(b):
    return tuple(p.reshape(heads, head_dim) for p in np.split(b, 3))
  return [
      Rule(f"{hf}.weight", tuple(f"{n}/kernel" for n in names), split_w,
           lambda q, k, v: np.concatenate([x.reshape(x.shape[0], -1) for x in (q, k, v)], 1)),
      Rule(f"{hf}.bias", tuple(f"{n}/bias" for n in names), split_b,
           lambda q, k, v: np.concatenate([x.reshape(-1) for x in (q, k, v)])),
  ]
