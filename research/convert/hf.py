"""Import and export Hugging Face checkpoints: `load_pretrained(dir)`, `save_pretrained(...)`.

Reads `config.json` plus `model.safetensors` (or a sharded `model.safetensors.index.json`, or
`pytorch_model.bin` when torch is installed) from a local directory, and writes `config.json` +
`model.safetensors` that transformers loads with the matching `AutoModel*` class. Both base-model
checkpoints (as `AutoModel` saves them) and task-model checkpoints (with the 'bert.',
'roberta.', 'transformer.' or 'model.' prefix) load. A hub name is looked up by
`research.convert.hub` (re-exported here: `resolve`, `local_dir`, ...).
"""
import dataclasses
import json
import os

import jax
import numpy as np

from research import models
from research import params as params_lib
from research.convert import architectures
from research.convert.hub import (  # pylint: disable=unused-import  (callers say hf.resolve, ...)
    PACKAGED, from_hub, is_path, local_dir, packaged_dir, resolve)
from research.errors import UserError
from research.models import layers, layout
from research.models.config import ModelConfig


def read_tensors(directory: str) -> dict:
  """{name: numpy array} from the directory's safetensors file(s) or pytorch_model.bin."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(single):
    return load_file(single)
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(load_file(os.path.join(directory, shard)))
    return tensors
  bin_path = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f"{bin_path} is a PyTorch pickle: install torch to read it, or convert it to "
                      "model.safetensors") from None
    state = torch.load(bin_path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  raise UserError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in "
                  f"{directory!r}")


def read_tensor_names(directory: str) -> list:
  """The tensor names of a checkpoint, without reading the tensors where the format allows."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(single):
    with safe_open(single, "np") as f:
      return list(f.keys())
  if os.path.exists(index):
    with open(index) as f:
      return list(json.load(f)["weight_map"])
  return list(read_tensors(directory))


def expected_shapes(model_cfg: ModelConfig) -> dict:
  """{our parameter path: shape} of the model `model_cfg` describes."""
  model = models.build(model_cfg)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.int32),
                         masked_positions=np.zeros((1, 1), np.int32)))["params"]
  return {path: tuple(v.shape) for path, v in params_lib.flatten(abstract).items()}


def _read_config(directory: str) -> dict:
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"no config.json in {directory!r}")
  with open(config_path) as f:
    return json.load(f)


def _describe(hf_config: dict, names, overrides):
  """(architecture, ModelConfig, is a task model) from config.json and the tensor names."""
  arch = architectures.get(hf_config.get("model_type"))
  task_model = any(k.startswith(arch.prefix) for k in names)
  stripped = {k[len(arch.prefix):] if task_model and k.startswith(arch.prefix) else k for k in names}
  fields = arch.to_model_config(hf_config, stripped, task_model)
  fields.update({"dtype": "float32", **overrides})  # transformers' numbers unless asked otherwise
  return arch, ModelConfig.from_dict(fields), task_model


def model_config_of(name_or_dir: str, **overrides) -> ModelConfig:
  """The ModelConfig a checkpoint loads as, reading only its config and tensor names."""
  directory = resolve(name_or_dir)
  return _describe(_read_config(directory), read_tensor_names(directory), overrides)[1]


def load_pretrained(name_or_dir: str, **overrides):
  """Returns (ModelConfig, params) for a transformers checkpoint directory.

  `overrides` replace ModelConfig fields that do not change parameters. Compute is float32
  unless `dtype` is given (e.g. dtype='bfloat16'), so the outputs are transformers' numbers.
  With `scan_layers=True` the blocks' parameters come stacked (`research.models.layout`).
  """
  directory = resolve(name_or_dir)
  hf_config = _read_config(directory)
  tensors = read_tensors(directory)
  arch, model_cfg, task_model = _describe(hf_config, list(tensors), overrides)
  strip = lambda k: k[len(arch.prefix):] if task_model and k.startswith(arch.prefix) else k
  stripped = {strip(k): v for k, v in tensors.items()}

  shapes = expected_shapes(dataclasses.replace(model_cfg, scan_layers=False))  # the rules' layout
  flat, used, missing = {}, set(), []
  for rule in arch.rules(model_cfg):
    if rule.hf not in stripped:
      missing.append((arch.prefix if task_model and rule.prefixed else "") + rule.hf)
      continue
    used.add(rule.hf)
    for path, value in zip(rule.ours, rule.to_ours(np.asarray(stripped[rule.hf]))):
      if path not in shapes:
        raise UserError(f"tensor {rule.hf!r} maps to {path!r}, which the model lacks")
      if tuple(value.shape) != shapes[path]:
        raise UserError(f"tensor {rule.hf!r} has shape {tuple(stripped[rule.hf].shape)}, which gives "
                        f"{tuple(value.shape)} for {path!r}; the model expects {shapes[path]}")
      flat[path] = np.asarray(value, np.float32)
  if missing:
    raise UserError(f"checkpoint {directory!r} lacks tensors: {', '.join(missing[:20])}"
                    + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""))
  unexpected = sorted(k for k in stripped if k not in used and k not in arch.ignored
                      and not k.endswith(getattr(arch, "ignored_suffixes", ())))
  if unexpected:
    raise UserError(f"checkpoint {directory!r} has tensors no rule reads: {', '.join(unexpected[:20])}")
  not_loaded = sorted(set(shapes) - set(flat))
  if not_loaded:
    raise UserError(f"no checkpoint tensor fills {', '.join(not_loaded[:20])}")
  return model_cfg, layout.as_layout(params_lib.unflatten(flat), model_cfg.scan_layers)


def plain_heads(model_cfg: ModelConfig) -> ModelConfig:
  """Heads as transformers classes name them ('classification=classification:5' ->
  'classification', num_labels=5); heads named otherwise (multi-task) have no HF class."""
  specs = model_cfg.head_specs
  named = [s.name for s in specs if s.name != s.kind]
  if named:
    raise UserError(f"heads {named} are named after tasks (multi-task); a transformers model "
                    "holds one head of each kind: export a single-task model")
  labels = next((s.num_labels for s in specs if s.kind == "classification"), model_cfg.num_labels)
  return dataclasses.replace(model_cfg, heads=tuple(s.kind for s in specs), num_labels=labels)


def tensor_name(arch, rule, task_model: bool) -> str:
  """The transformers name of `rule`'s tensor: backbone tensors of a task model (one with heads)
  carry the architecture's prefix ('bert.', 'transformer.', ...)."""
  return (arch.prefix if task_model and rule.prefixed else "") + rule.hf


def unrolled_float32(params) -> dict:
  """{path: float32 host array} of `params` in the unrolled layout (what the rules read)."""
  return {path: np.asarray(v, np.float32)
          for path, v in params_lib.flatten(layout.unstack_layers(jax.device_get(params))).items()}


def save_pretrained(model_cfg, params, directory: str, labels=None):
  """Writes config.json + model.safetensors for transformers' matching class; `params` in either
  layout (`research.models.layout`). `labels`: the classification head's class names in index
  order, written as id2label/label2id (transformers' pipelines print them; else LABEL_<i>)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  if not isinstance(model_cfg, ModelConfig):
    model_cfg = ModelConfig.from_dict(model_cfg)
  model_cfg = plain_heads(model_cfg)
  arch = architectures.for_model(model_cfg)
  flat = {path: v for path, v in unrolled_float32(params).items()  # training-only: not exported
          if f"/{layers.DISTILL_PROJECTION}/" not in path}
  task_model = bool(model_cfg.heads)
  tensors, used = {}, set()
  for rule in arch.rules(model_cfg):
    missing = [p for p in rule.ours if p not in flat]
    if missing:
      raise UserError(f"params lack {missing} (needed for {rule.hf!r})")
    used.update(rule.ours)
    tensors[tensor_name(arch, rule, task_model)] = np.ascontiguousarray(
        rule.to_hf(*(flat[p] for p in rule.ours)))
  left = sorted(set(flat) - used)
  if left:
    raise UserError(f"no {arch.model_type} tensor holds {left}")
  hf_config = arch.to_hf_config(model_cfg)
  hf_config.update(architectures=[arch.architecture(model_cfg.heads)], torch_dtype="float32")
  if labels and len(labels) == len(hf_config.get("id2label", ())):
    hf_config["id2label"] = {str(i): str(name) for i, name in enumerate(labels)}
    hf_config["label2id"] = {str(name): i for i, name in enumerate(labels)}
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
