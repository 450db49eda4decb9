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
                "pooler", "num_labels", "classifier", "scan_layers")


class Checkpointer:
  def __init__(self, directory: str, *, keep: int = 1, use_async: bool = True):
    self.directory = directory
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async))

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))

  @classmethod
  def latest_in(cls, directory: str):
    """The latest step saved in `directory`, or None; creates nothing."""
    return cls(directory, use_async=False).latest_step() if cls.exists(directory) else None

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


def checkpoints_of(path: str, key: str) -> str:
  """The checkpoint directory of `path`: a workdir of ours (its checkpoints/) or the directory
  itself; `key` names the config field in the error when there is none."""
  for candidate in (os.path.join(path, "checkpoints"), path):
    if Checkpointer.exists(candidate):
      return candidate
  raise UserError(f"{key}: no checkpoint found in {path!r}")


def workdir_params(workdir: str, *, best: bool = False, key: str = "workdir"):
  """The parameters a workdir holds, as host arrays: its best (`evals.best_metric`) ones if
  `best` and it kept any, else those of its latest checkpoint. The trainer (`init.weights`),
  `research.predict` and `research.convert` all read a workdir's weights through here."""
  best_dir = os.path.join(workdir, "best")
  if best and Checkpointer.exists(best_dir):
    manager = ocp.CheckpointManager(best_dir)
    return manager.restore(manager.latest_step(), args=ocp.args.Composite(
        params=ocp.args.StandardRestore()))["params"]
  ckpt = Checkpointer(checkpoints_of(workdir, key), use_async=False)
  return ckpt.restore_raw_state(ckpt.latest_step())["params"]


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


class BestCheckpoint:
  """Keeps the parameters of the best evaluation so far (WORKDIR/best/<step>/).

  `metric` is an eval key (e.g. 'eval/bbc_news/accuracy'), `mode` 'max' or 'min'. `patience`
  > 0 asks for early stopping after that many evaluations without improvement. Its state is
  recovered from disk and the metrics history, so a resumed run keeps counting where it was.
  """

  def __init__(self, directory: str, metric: str, mode: str = "max", patience: int = 0,
               history=()):
    if mode not in ("max", "min"):
      raise UserError(f"evals.best_mode must be 'max' or 'min', got {mode!r}")
    self.metric, self.mode, self.patience = metric, mode, patience
    self.manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False))
    self.step = self.manager.latest_step()
    self.value = None
    self.stale = 0  # evaluations since the best one
    for record in history:
      if metric in record and record[metric] is not None:
        self._observe(record["step"], record[metric])

  def _better(self, value) -> bool:
    return self.value is None or (value > self.value if self.mode == "max" else value < self.value)

  def _observe(self, step, value) -> bool:
    if self._better(value):
      self.step, self.value, self.stale = step, value, 0
      return True
    self.stale += 1
    return False

  def update(self, step: int, metrics: dict, params) -> bool:
    """Records an evaluation; saves `params` if it is the best. Returns True if it was."""
    if self.metric not in metrics:
      raise UserError(f"evals.best_metric {self.metric!r} is not among the eval metrics: "
                      f"{sorted(k for k in metrics if k.startswith('eval/'))}")
    improved = self._observe(step, metrics[self.metric])
    if improved:
      self.manager.save(step, force=True, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params)))
      self.manager.wait_until_finished()
    return improved

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.stale >= self.patience

  def restore(self, abstract_params):
    return self.manager.restore(self.step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))["params"]

  def close(self):
    self.manager.close()
