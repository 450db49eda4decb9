"""Device mesh and logical-axis sharding rules.

The mesh has three axes, sized by `config.mesh`:
  data    pure data parallelism (parameters replicated)
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3 style)
  tensor  Megatron-style tensor parallelism (attention heads, MLP and vocabulary split)
One size may be -1: it takes the devices the others leave. Parameters and activations carry
logical axis names (see `research.models.layers`); `config.sharding_rules` maps them to mesh axes,
so changing the parallelism is a config change, never a model change.
"""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from research.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every data-parallel device

DEFAULT_RULES = (
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),  # the stacked blocks' axis (model.scan_layers): never split
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple:
  """Resolves the configured sizes (one may be -1) against the number of devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"mesh sizes must be positive, with at most one -1; got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # topologies mesh_utils does not know (e.g. simulated CPU devices)
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def rules_of(config) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.sharding_rules)


def shardings_of(abstract_boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree whose leaves carry logical names (`nn.LogicallyPartitioned`).

  Raises UserError naming the first array the mesh cannot split evenly (e.g. 12 attention heads
  over tensor=8), where jax would fail with a traceback when the state is created."""
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_boxed_tree), mesh, rules)
  # Only the shapes are read: no sharding constraint, so this works under a mesh context too
  # (e.g. `research.generate` called by an evaluation inside the train loop).
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned)
                        else x, abstract_boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  jax.tree_util.tree_map_with_path(_check_divisible, shapes, shardings)
  return shardings


def _check_divisible(path, array, named_sharding):
  for dim, (size, axes) in enumerate(zip(array.shape, named_sharding.spec)):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = math.prod(named_sharding.mesh.shape[a] for a in axes)
    if size % ways:
      name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      raise UserError(f"mesh {dict(named_sharding.mesh.shape)} cannot split {name} of shape "
                      f"{tuple(array.shape)}: its dimension {dim} ({size}) over "
                      f"{' x '.join(axes)} ({ways} ways); choose mesh sizes that divide it")
