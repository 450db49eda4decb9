"""Checkpoints: full train state + data-iterator position + config, with orbax.

Layout: WORKDIR/checkpoints/<step>/{state,data,config}. Saves are asynchronous (training goes on
while the arrays are written) and atomic (orbax writes to a temporary directory and renames it,
so a killed job never leaves a checkpoint that looks valid but is not). The last `keep` survive.
"""
import os

import orbax.checkpoint as ocp

from research.errors import UserError

# Model fields that fix parameter shapes: a checkpoint differing in one cannot be restored.
SHAPE_FIELDS = ("kind", "vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                "max_len", "type_vocab_size", "heads", "tie_embeddings", "num_kv_heads",
                "attention_head_dim", "norm", "gated_mlp", "use_bias", "position_embedding",
                "pooler", "num_labels", "classifier")


class Checkpointer:
  def __init__(self, directory: str, *, keep: int = 1, use_async: bool = True):
    self.directory = directory
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async))

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))

  def latest_step(self):
    return self.manager.latest_step()

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def save(self, step: int, state, data_state: dict, config: dict):
    """Starts writing checkpoint `step` (returns once the arrays are copied off the devices)."""
    self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)))

  def restore(self, step: int, abstract_state):
    """Restores (state, data_state) at `step`, laid out as `abstract_state`'s shardings say."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def restore_raw_state(self, step: int):
    """The saved train state as host arrays, whatever model it belongs to (weights-only init)."""
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def check_same_shapes(saved_model_cfg: dict, model_cfg: dict, where: str):
  """Raises `UserError` naming the fields where a checkpoint's model differs from this one."""
  diff = [f"{k}={saved_model_cfg.get(k)!r} (checkpoint) vs {model_cfg.get(k)!r} (config)"
          for k in SHAPE_FIELDS
          if k in saved_model_cfg and _norm(saved_model_cfg[k]) != _norm(model_cfg.get(k))]
  if diff:
    raise UserError(f"{where} holds a checkpoint of a different model: {'; '.join(diff)}. "
                    "Use a new --workdir, or match the model config")


def _norm(v):
  return list(v) if isinstance(v, (list, tuple)) else v
