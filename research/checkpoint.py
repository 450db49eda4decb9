"""Checkpoints: train state + data-iterator position + config, with orbax.

Layout: WORKDIR/checkpoints/<step>/{state,data,config[,base]}. Saves are asynchronous (training goes on
while the arrays are written) and atomic (orbax writes to a temporary directory and renames it,
so a killed job never leaves a checkpoint that looks valid but is not). The last `keep` survive.

Faults: a step that fails to restore is damaged and skipped (the trainer moves its own to
WORKDIR/checkpoints.damaged/<step>-<UTC time>); temporary directories of saves that never
finished are removed at the next start, with a note; a save that fails (disk full, unwritable)
raises `SaveFailed` naming the last intact step.

Adapter-only checkpoints (a PEFT run that started from a base, `init.weights`): the state's
parameters are split in two. The frozen parameters the base provided are not saved: the `base`
item holds a `BaseReference` instead (the base's source as an absolute path, the frozen paths and
dtypes, and a sha256 over their bytes). Everything else is saved: the trained parameters, their
optimizer state, and any frozen parameter the base did not provide (a new module, `init.exclude`).
Every restore here (`Checkpointer.restore`, `workdir_params`, `BestCheckpoint.restore`) reloads
the frozen part from the base and checks the checksum, so its callers always get full parameters.
"""
import dataclasses
import hashlib
import json
import logging
import os
import re
import time

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from research import params as params_lib
from research.errors import SaveFailed, UserError
from research.models import layout

log = logging.getLogger(__name__)
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a save's directory until it is complete

# Model fields that fix parameter shapes: a checkpoint differing in one cannot be restored.
SHAPE_FIELDS = ("kind", "vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                "max_len", "type_vocab_size", "heads", "tie_embeddings", "num_kv_heads",
                "attention_head_dim", "norm", "gated_mlp", "use_bias", "position_embedding",
                "pooler", "num_labels", "classifier", "scan_layers")


def weights_of(source: str, scan_layers: bool, key: str = "init.weights") -> dict:
  """{path: host array} of a weights source: 'hf:DIR' or a workdir of ours (its latest weights),
  in the layout of a model with `model.scan_layers=scan_layers`, whichever it was saved in."""
  if source.startswith("hf:"):
    from research.convert import hf  # pylint: disable=g-import-not-at-top
    _, params = hf.load_pretrained(hf.resolve(source[3:]), dtype="float32",
                                   scan_layers=scan_layers)
  else:
    params = layout.as_layout(workdir_params(source, key=key), scan_layers)
  return params_lib.flatten(params)


def absolute_source(source: str) -> str:
  """`init.weights` with its path made absolute ('hf:DIR' stays 'hf:'), so a reference to it
  holds wherever the run is resumed from."""
  if source.startswith("hf:"):
    from research.convert import hf  # pylint: disable=g-import-not-at-top
    return "hf:" + os.path.abspath(hf.resolve(source[3:]))
  return os.path.abspath(source)


def checksum(frozen: dict) -> str:
  """sha256 over the arrays of {path: array} in path order (each path, dtype, shape and bytes)."""
  digest = hashlib.sha256()
  for path in sorted(frozen):
    value = np.ascontiguousarray(frozen[path])
    digest.update(f"{path}|{value.dtype.name}|{value.shape}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class BaseReference:
  """What an adapter-only checkpoint holds in place of the frozen parameters its base provided:
  the base (`init.weights`, absolute), the layout they were read in, {path: dtype} of those
  parameters (cast as the run cast them) and `checksum` over them."""
  source: str
  scan_layers: bool
  frozen: dict
  checksum: str

  @classmethod
  def of(cls, source: str, scan_layers: bool, frozen: dict) -> "BaseReference":
    """The reference to `frozen` ({path: host array}, as loaded into the run) from `source`."""
    return cls(absolute_source(source), scan_layers,
               {p: np.asarray(v).dtype.name for p, v in sorted(frozen.items())}, checksum(frozen))

  def saved_part(self, params):
    """`params` (a nested tree, arrays or abstract) without the frozen parameters."""
    return params_lib.unflatten({p: v for p, v in params_lib.flatten(params).items()
                                 if p not in self.frozen})

  def load_frozen(self, where: str) -> dict:
    """{path: host array} of the frozen parameters, read again from the base and checked against
    the checksum; `UserError` naming `where` (the checkpoint) if the base is gone or changed."""
    path = self.source[3:] if self.source.startswith("hf:") else self.source
    if not os.path.exists(path):
      raise UserError(f"{where} is an adapter-only checkpoint whose base {self.source!r} is gone; "
                      "restore it there (the frozen parameters are not in the checkpoint)")
    weights = weights_of(self.source, self.scan_layers, key=f"the base of {where}")
    missing = sorted(set(self.frozen) - set(weights))
    frozen = {p: np.asarray(weights[p], dtype) for p, dtype in self.frozen.items() if p in weights}
    if missing or checksum(frozen) != self.checksum:
      changed = f"{len(missing)} frozen parameters missing, e.g. {missing[0]!r}" if missing else \
          f"checksum {checksum(frozen)[:12]}, expected {self.checksum[:12]}"
      raise UserError(f"{where} is an adapter-only checkpoint whose base {self.source!r} has "
                      f"changed ({changed}); restore the base it was trained on, or start a new "
                      "--workdir")
    return frozen

  def full(self, saved, where: str, like=None):
    """The full parameters: `saved` (the checkpoint's part) joined with the frozen ones from the
    base; with `like` (abstract params with shardings) placed as it says, else host arrays."""
    flat = params_lib.flatten(saved)
    shardings = params_lib.flatten(like) if like is not None else {}
    for path, value in self.load_frozen(where).items():
      flat[path] = jax.device_put(value, shardings[path].sharding) if like is not None else value
    return params_lib.unflatten(flat)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _saved_base(manager, step: int) -> "BaseReference | None":
  """The `base` item of `manager`'s `step` if it holds one (adapter-only), else None."""
  if not (epath.Path(manager.directory) / str(step) / "base").exists():
    return None
  return BaseReference(**manager.restore(step, args=ocp.args.Composite(
      base=ocp.args.JsonRestore()))["base"])


def _base_items(base) -> dict:
  """The `base` item of a save: the reference of an adapter-only checkpoint, else none."""
  return {"base": ocp.args.JsonSave(base.to_json())} if base is not None else {}


class Checkpointer:
  """One checkpoint directory. Reading it never trusts the newest step blindly: a step that fails
  to restore (a truncated or deleted file, unreadable metadata, a missing item) is damaged, named
  in one warning line, and the next older step is used (`restore_newest`); the trainer moves the
  damaged ones of its own workdir aside. A save that fails raises `SaveFailed`."""

  def __init__(self, directory: str, *, keep: int = 1, use_async: bool = True,
               clean_unfinished: bool = False):
    """`clean_unfinished` (the trainer, on its own workdir): remove the temporary directories of
    saves that never finished (a killed or failed run), with a one-line note."""
    self.directory = directory
    self.moved_aside = []  # "<step> -> <where>" for each damaged step `restore_newest` moved
    self.pending = None  # the step of a save still being written in the background
    if clean_unfinished:
      note_unfinished(directory)
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
            cleanup_tmp_directories=clean_unfinished))

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))

  @classmethod
  def latest_in(cls, directory: str):
    """The newest step of `directory` whose metadata reads, or None; writes nothing."""
    return cls(directory, use_async=False).newest_readable() if cls.exists(directory) else None

  def latest_step(self):
    return self.manager.latest_step()

  def newest_readable(self):
    """The newest step whose metadata (config, data position, the state's tree) reads; writes
    nothing. Its arrays are only read by a restore: `restore_newest` checks those."""
    for step in reversed(self.manager.all_steps()):
      try:
        self.saved_config(step)
        self.saved_state_fields(step)
        return step
      except Exception:  # pylint: disable=broad-except  (any failure: damaged, see restore_newest)
        continue
    return None

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))["config"]

  def saved_data_state(self, step: int) -> dict:
    """The `data` item: the data position, and the tokenizer's fingerprint (since it was added)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore()))["data"]

  def save(self, step: int, state, data_state: dict, config: dict,
           base: BaseReference | None = None):
    """Starts writing checkpoint `step` (returns once the arrays are copied off the devices);
    with `base`, adapter-only: without the frozen parameters `base` refers to.
    Raises `SaveFailed` if this save, or the previous one still in the background, failed."""
    self.wait(now=step)
    if base is not None:
      state = state.replace(params=base.saved_part(state.params))
    try:
      self.manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(config), **_base_items(base)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, step, e) from None
    self.pending = step

  def restore(self, step: int, abstract_state):
    """Restores (state, data_state, base) at `step`, laid out as `abstract_state`'s shardings
    say; `base` is the `BaseReference` of an adapter-only checkpoint (its frozen parameters are
    read again from the base and checked), else None.

    A checkpoint written before the train state carried `health` (non-finite step counts) is
    restored without it and gets a fresh one: such runs resume, they are not damaged."""
    base = self.saved_base(step)
    saved_fields = self.saved_state_fields(step)
    target = abstract_state
    if base is not None:
      target = target.replace(params=base.saved_part(abstract_state.params))
    if saved_fields and "health" not in saved_fields:
      target = {k: getattr(target, k) for k in saved_fields}
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    state = out["state"]
    if isinstance(target, dict):
      state = abstract_state.replace(
          **state, health=jax.tree.map(lambda fresh, a: jax.device_put(np.asarray(fresh), a.sharding),
                                       type(abstract_state.health).fresh(), abstract_state.health))
    if base is not None:
      state = state.replace(params=base.full(state.params, self.step_path(step),
                                             abstract_state.params))
    return state, out["data"], base

  def saved_base(self, step: int) -> BaseReference | None:
    """The base an adapter-only checkpoint `step` refers to; None for a full checkpoint."""
    return _saved_base(self.manager, step)

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def saved_state_fields(self, step: int) -> list:
    """The top-level fields of the train state saved at `step` (from its metadata only)."""
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state")
    tree = getattr(metadata, "tree", None)
    return list(tree) if isinstance(tree, dict) else []

  def restore_raw_state(self, step: int):
    """The saved train state as host arrays, whatever model it belongs to (weights-only init);
    an adapter-only checkpoint's params are completed from its base."""
    state = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    base = self.saved_base(step)
    if base is not None:
      state["params"] = base.full(state["params"], self.step_path(step))
    return state

  def restore_saved_params(self, step: int):
    """The parameters saved at `step`, whatever model they belong to, reading only them: not
    the optimizer state, twice their size (a 1-layer MiniLM workdir: 0.2 s instead of 0.65 s).
    Each array is laid out as it was saved; saved on devices this process does not have (8
    devices, read by a 1-device predict), on this process's first device."""
    path = epath.Path(self.step_path(step)) / "state"
    saved = ocp.StandardCheckpointHandler().metadata(path).tree["params"]
    shardings = jax.tree.map(_saved_or_local_sharding, saved)
    params = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item={"params": saved},
        restore_args={"params": ocp.checkpoint_utils.construct_restore_args(saved, shardings)},
        partial_restore=True))["params"]
    base = self.saved_base(step)
    if base is not None:
      params = base.full(params, self.step_path(step))
    return params

  def restore_newest(self, restore, *, set_aside: bool = False):
    """(step, restore(step)) for the newest step that restores, or (None, None).

    Every newer step whose restore fails is damaged (a `UserError`, an adapter-only checkpoint's
    base gone or changed, is raised instead: the step itself is intact): one warning line names the step and the
    problem. With `set_aside` (the trainer's own workdir) it is moved to
    <directory>.damaged/<step>-<UTC time>, out of orbax's sight (nothing is deleted), and
    listed in `moved_aside`; other readers (init.resume, init.weights, predict, convert) only
    skip it, leaving another run's workdir as it is.
    """
    for step in reversed(self.manager.all_steps()):
      try:
        value, problem = restore(step), None
      except UserError:  # the checkpoint is intact, its base is not (adapter-only): not damage
        raise
      except Exception as e:  # pylint: disable=broad-except  (whatever the damage raises)
        value, problem = None, one_line(e)
      if not _anywhere(problem is not None):
        return step, value
      if set_aside:
        where = self._set_aside(step)
        self.moved_aside.append(f"{step} -> {where}")
        log.warning("checkpoint %d is damaged (%s): moved to %s; trying the one before", step,
                    problem or "on another process", where)
      else:
        log.warning("checkpoint %d in %s is damaged (%s): skipped; trying the one before", step,
                    self.directory, problem or "on another process")
    return None, None

  def _set_aside(self, step: int) -> str:
    """Moves damaged step `step` to <directory>.damaged/ (process 0; the others wait for it)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = os.path.join(self.directory.rstrip("/") + ".damaged", f"{step}-{stamp}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self.manager.reload()
    return target

  def wait(self, now: int | None = None):
    """Waits for the save in the background; `SaveFailed` if it failed (`now`: the step the
    run has reached, for the message)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(self.pending, now, e) from None
    self.pending = None

  def _save_failed(self, step, now, error) -> SaveFailed:
    intact = [int(n) for n in os.listdir(self.directory) if n.isdigit() and int(n) != step] \
        if os.path.isdir(self.directory) else []
    last = f"step {max(intact)}" if intact else "none"
    stopped = f"; stopped at step {now}" if now is not None and now != step else ""
    return SaveFailed(
        f"checkpoint {step} could not be written to {self.directory}: {one_line(error)}"
        f"{stopped}; the last intact checkpoint is {last}. Free space (or fix the permissions) "
        "and rerun the same command to resume from it; the unfinished save's temporary "
        "directory is removed then")

  def close(self):
    self.manager.close()


# The operating system's reason inside tensorstore's messages ("... 6: File too large
# [os_error_code='27']") and Python's ("[Errno 28] No space left on device").
OS_REASON = re.compile(r"([A-Z][\w ,'-]*?) \[os_error_code='\d+'\]|\[Errno \d+\] ([^:\]]+)")


def one_line(error: Exception, limit: int = 300) -> str:
  """The innermost cause of `error` as one short line (orbax wraps tensorstore's message); a
  long one keeps its start and end; the operating system's reason ('File too large') is kept
  wherever it was, in this message or in an exception it was raised from or while handling (a
  save in a background thread re-raised without its cause)."""
  chain = [error]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  while error.__cause__ is not None:
    error = error.__cause__
  text = f"{type(error).__name__}: {' '.join(str(error).split())}"
  reason = next((m.group(1) or m.group(2) for m in (OS_REASON.search(str(e)) for e in chain)
                 if m), None)
  reason = reason and reason.strip()
  if len(text) <= limit:
    return text if not reason or reason in text else f"{text} ({reason})"
  head, tail = text[:limit // 2], text[-limit // 2:]
  middle = f" ... {reason} ... " if reason and reason not in head + tail else " ... "
  return head + middle + tail


def _anywhere(flag: bool) -> bool:
  """True if `flag` holds on any process (every process then treats a step alike)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def note_unfinished(directory: str):
  """One line naming the temporary directories that killed or failed saves left in `directory`
  (orbax ignores them when it lists steps; the trainer's checkpointer removes them)."""
  if os.path.isdir(directory):
    names = sorted(n for n in os.listdir(directory) if TMP_MARK in n)
    if names and jax.process_index() == 0:
      log.warning("removing %d unfinished save(s) left by a killed or failed run in %s: %s",
                  len(names), directory, ", ".join(names))


def checkpoints_of(path: str, key: str) -> str:
  """The checkpoint directory of `path`: a workdir of ours (its checkpoints/) or the directory
  itself; `key` names the config field in the error when there is none."""
  for candidate in (os.path.join(path, "checkpoints"), path):
    if Checkpointer.exists(candidate):
      return candidate
  raise UserError(f"{key}: no checkpoint found in {path!r}")


def check_float_weights(path: str, key: str):
  """Refuses a workdir of int8 weights as a training source (`key`: init.weights,
  distill.teacher): its int8 kernels would load as float numbers without their scales."""
  from research.models import quantization  # pylint: disable=g-import-not-at-top
  config = os.path.join(path, "config.json")
  if not os.path.exists(config):
    return
  with open(config) as f:
    mode = json.load(f).get("model", {}).get("quantization", "none")
  if mode in quantization.INT8_MODES:
    raise UserError(f"{key}: {path!r} holds an int8 model (model.quantization={mode!r}), made for "
                    "inference: start from the float workdir it was quantized from")


def workdir_config(workdir: str) -> dict:
  """The resolved config a run of ours wrote (WORKDIR/config.json); one line if there is none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"no config.json in {workdir!r}: is it a workdir of ours?")
  with open(path) as f:
    return json.load(f)


def workdir_params(workdir: str, *, best: bool = False, key: str = "workdir"):
  """The parameters a workdir holds, as host arrays: its best (`evals.best_metric`) ones if
  `best` and it kept any, else those of its newest restorable checkpoint (damaged ones are
  skipped with a warning, never changed). The trainer (`init.weights`), `research.predict` and
  `research.convert` all read a workdir's weights through here."""
  best_dir = os.path.join(workdir, "best")
  if best and Checkpointer.exists(best_dir):
    kept = Checkpointer(best_dir, use_async=False)
    step, params = kept.restore_newest(lambda s: kept_params(kept.manager, s))
    if step is not None:
      return params
  ckpt = Checkpointer(checkpoints_of(workdir, key), use_async=False)
  step, params = ckpt.restore_newest(ckpt.restore_saved_params)
  if step is None:
    raise UserError(f"{key}: no checkpoint in {ckpt.directory!r} can be restored (each is "
                    "damaged: see the warnings above)")
  return params


def _saved_or_local_sharding(leaf) -> jax.sharding.Sharding | None:
  """A saved array's sharding (None for one saved from numpy: it is read as numpy)."""
  if getattr(leaf, "sharding", None) is None:
    return None
  try:
    return leaf.sharding.to_jax_sharding()
  except ValueError:  # its devices are not this process's
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def check_same_shapes(saved_model_cfg: dict, model_cfg: dict, where: str):
  """Raises `UserError` naming the fields where a checkpoint's model differs from this one."""
  diff = [f"{k}={saved_model_cfg.get(k)!r} (checkpoint) vs {model_cfg.get(k)!r} (config)"
          for k in SHAPE_FIELDS
          if k in saved_model_cfg and _norm(saved_model_cfg[k]) != _norm(model_cfg.get(k))]
  if diff:
    raise UserError(f"{where} holds a checkpoint of a different model: {'; '.join(diff)}. "
                    "Use a new --workdir, or match the model config")


# What a resumed run may change: its length, what it reports, how often it saves and evaluates,
# the layout of its arrays over the devices (orbax reshards on restore), and where its compiled
# programs are cached (which never changes a result). Any other change would make the resumed
# run a different experiment than the one its checkpoints belong to.
RESUMABLE_FIELDS = ("train.steps", "logging.", "ckpt.every_steps", "ckpt.keep", "ckpt.use_async",
                    "evals.every_steps", "evals.patience", "mesh.", "sharding_rules",
                    "model.remat", "compile.", "data_cache.")


def check_same_run(saved_config: dict, config: dict, where: str, shown: int = 4):
  """Raises `UserError` listing `key: saved -> new` for the fields (other than
  `RESUMABLE_FIELDS`) where this run's resolved config differs from its checkpoint's."""
  diff = config_diff(saved_config, config)
  if diff:
    more = f" (and {len(diff) - shown} more)" if len(diff) > shown else ""
    may_change = ", ".join(f + "*" if f.endswith(".") else f for f in RESUMABLE_FIELDS)
    raise UserError(f"{where} holds a run with a different config: {'; '.join(diff[:shown])}"
                    f"{more}. Use a new --workdir, or restore these values (a resumed run may "
                    f"change only {may_change})")


def config_diff(saved_config: dict, config: dict) -> list:
  """`key: saved -> new` for each field (other than `RESUMABLE_FIELDS`) that differs. Only fields
  both configs have are compared: one the other lacks comes from another version of this library
  (a field added or renamed since the checkpoint was written), not from the user."""
  saved, new = flat_config(saved_config), flat_config(config)
  return [f"{k}: {saved[k]!r} -> {new[k]!r}" for k in sorted(set(saved) & set(new))
          if saved[k] != new[k]
          and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUMABLE_FIELDS)]


def tokenizer_fingerprint(tokenizer) -> str:
  """sha256 of the tokenizer as a run uses it: its tokenizer.json (vocabulary, normalizer,
  pre-tokenizer, model, post-processor, added tokens) as canonical JSON, without the padding and
  truncation settings, which the run sets itself. Saved with each checkpoint (`data` item), so
  that a resumed run refuses a tokenizer.json swapped since: its ids would mean other tokens."""
  spec = json.loads(tokenizer.to_str())
  spec.pop("padding", None)
  spec.pop("truncation", None)
  canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()


def check_same_tokenizer(saved_fingerprint: str | None, tokenizer, where: str, path: str,
                         step: int):
  """`UserError` if the tokenizer this run loaded (from `path`) is not the one checkpoint `step`
  was trained with; a checkpoint from before fingerprints (None) is not checked."""
  if saved_fingerprint and saved_fingerprint != tokenizer_fingerprint(tokenizer):
    raise UserError(f"{where} holds a checkpoint trained with another tokenizer: {path!r} differs "
                    f"from the tokenizer checkpoint {step} was trained with. Restore that "
                    "tokenizer.json, or use a new --workdir")


def flat_config(tree: dict, prefix: str = "") -> dict:
  """{'section.key': value} of a nested config dict (lists and tuples alike, as lists)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = _norm_deep(v)
  return out


def _norm_deep(v):
  return [_norm_deep(x) for x in v] if isinstance(v, (list, tuple)) else v


def _norm(v):
  return list(v) if isinstance(v, (list, tuple)) else v


def kept_params(manager, step: int, abstract_params=None):
  """The parameters WORKDIR/best/`step` keeps (host arrays without `abstract_params`), completed
  from the base if they are adapter-only."""
  base = _saved_base(manager, step)
  target = abstract_params
  if base is not None and abstract_params is not None:
    target = base.saved_part(abstract_params)
  params = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))["params"]
  if base is None:
    return params
  return base.full(params, os.path.join(str(manager.directory), str(step)), abstract_params)


class BestCheckpoint:
  """Keeps the parameters of the best evaluation so far (WORKDIR/best/<step>/).

  `metric` is an eval key (e.g. 'eval/bbc_news/accuracy'), `mode` 'max' or 'min'. `patience`
  > 0 asks for early stopping after that many evaluations without improvement. Its state is
  recovered from disk and the metrics history, so a resumed run keeps counting where it was.
  """

  def __init__(self, directory: str, metric: str, mode: str = "max", patience: int = 0,
               history=(), base: BaseReference | None = None):
    """`base`: the run's `BaseReference` (adapter-only: the frozen parameters are not saved)."""
    if mode not in ("max", "min"):
      raise UserError(f"evals.best_mode must be 'max' or 'min', got {mode!r}")
    self.metric, self.mode, self.patience, self.base = metric, mode, patience, base
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
      try:
        saved = params if self.base is None else self.base.saved_part(params)
        self.manager.save(step, force=True, args=ocp.args.Composite(
            params=ocp.args.StandardSave(saved), **_base_items(self.base)))
        self.manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        raise SaveFailed(f"the best parameters (step {step}) could not be written to "
                         f"{self.manager.directory}: {one_line(e)}. Free space (or fix the "
                         "permissions) and rerun the same command to resume") from None
    return improved

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.stale >= self.patience

  def restore(self, abstract_params):
    """The best parameters, laid out as `abstract_params` say."""
    return kept_params(self.manager, self.step, abstract_params)

  def close(self):
    self.manager.close()
