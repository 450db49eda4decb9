"""Parameter paths: how every module names a parameter of a plain params pytree.

A path is the '/'-joined keys from the root, e.g. 'backbone/layer_0/attention/query/kernel'.
Optimizer masks (weight decay, trainable parameters), `init.weights`/`init.exclude`, HF
conversion and PEFT all match parameters by these paths (regexes searched in them), so no module
depends on one library's naming and none needs to import another to name a parameter.
"""
import re

import jax


def path_str(path) -> str:
  """'a/b/c' for a `jax.tree_util` key path (dict keys, attributes and indices alike)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _is_box(x) -> bool:
  """A flax `Partitioned` box (a leaf with its logical axes), named by its parent's path."""
  return hasattr(x, "unbox")


def flatten(params) -> dict:
  """{path: leaf} of a params pytree (flax `Partitioned` boxes are leaves' values)."""
  leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]
  return {path_str(p): getattr(v, "value", v) for p, v in leaves}


def unflatten(flat: dict) -> dict:
  """The nested params tree of a {path: leaf} dict (the inverse of `flatten`)."""
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def matches(patterns):
  """A function path -> True when any regex of `patterns` is found in the path."""
  compiled = [re.compile(p) for p in patterns]
  return lambda path: any(c.search(path) for c in compiled)


def mask(params, predicate):
  """A pytree of bools shaped like `params`: predicate(path) per leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(predicate(path_str(p))), params,
                                          is_leaf=_is_box)


def split(params, predicate) -> tuple:
  """(selected, rest): two trees shaped like `params`, with None where a leaf belongs to the
  other (predicate(path) picks `selected`). `jax.grad` of a function of `selected` then computes
  no gradient for `rest`. `join` puts them back together."""
  pick = lambda want: jax.tree_util.tree_map_with_path(
      lambda p, v: v if bool(predicate(path_str(p))) == want else None, params)
  return pick(True), pick(False)


def join(selected, rest):
  """The inverse of `split`."""
  return jax.tree.map(lambda a, b: b if a is None else a, selected, rest,
                      is_leaf=lambda x: x is None)
