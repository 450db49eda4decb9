"""The one initialisation policy, in order:

  1. the workdir's own latest valid checkpoint (full state and data position: a resumed run;
     damaged newer ones are moved to WORKDIR/checkpoints.damaged/),
  2. `init.resume`: the full state of another run's latest valid checkpoint,
  3. the weights a training feature gives (`Feature.initial_weights`: a distillation student
     with `distill.init=every_k` takes its teacher's, every k-th block), else `init.weights`:
     weights only, from a workdir of ours or 'hf:DIR' (a transformers checkpoint); either way
     every parameter whose path and shape match, minus `init.exclude` regexes, the source's
     blocks first put in this model's layout (`model.scan_layers`),
  4. from scratch.

A PEFT run (`peft.method` other than 'none') that starts from `init.weights` saves adapter-only
checkpoints: `initial_state` returns the `checkpoint.BaseReference` to the frozen parameters the
base provided, which the trainer passes to its saves; a resumed run (or `init.resume`) takes the
reference its checkpoint holds. A run from scratch has no base: its checkpoints stay full.

`configure` applies what a source changes in the config (an HF checkpoint fixes the model's shape
and brings its tokenizer; our workdirs bring their tokenizer); it runs while the config is
resolved, for a resumed run too, so both resolve the same config. `check_sources` fails early on
a source without a checkpoint. `initial_state` picks the state by the policy.
"""
import dataclasses
import logging
import os

import jax
import numpy as np

from research import checkpoint as ckpt_lib
from research import params as params_lib
from research.errors import UserError

log = logging.getLogger(__name__)

# Model fields a run keeps from its own config when it starts from a Hugging Face checkpoint.
OWN_MODEL_FIELDS = ("heads", "dtype", "param_dtype", "attention_impl", "num_labels", "remat",
                    "scan_layers", "peft")


def configure(config):
  """Sets what `init.weights` implies: HF model shape and tokenizer, or our run's tokenizer."""
  source = config.init.weights
  if source.startswith("hf:"):
    from research.convert import hf  # pylint: disable=g-import-not-at-top
    directory = hf.resolve(source[3:])
    hf_model = hf.model_config_of(directory)
    check_kind(config, hf_model.kind, source)
    for field, value in dataclasses.asdict(hf_model).items():
      if field not in OWN_MODEL_FIELDS:
        config.model[field] = value
    # Fine-tuning BERT's classifier reads the pooled output: add a (new) pooler if the checkpoint
    # has none (BertForMaskedLM saves none).
    config.model.pooler = hf_model.pooler or (bool(config.get("tasks")) and
                                              hf_model.classifier == "pooled")
    if not config.data.tokenizer:
      config.data.tokenizer = directory
  elif source:
    if os.path.exists(os.path.join(source, "config.json")):
      check_kind(config, ckpt_lib.workdir_config(source)["model"]["kind"], source)
    saved = os.path.join(source, "tokenizer.json")
    if not config.data.tokenizer and os.path.exists(saved):
      config.data.tokenizer = saved


def check_kind(config, source_kind: str, source: str):
  """An encoder's weights never start a decoder run, nor the reverse: one line, before the run."""
  if source_kind != config.model.kind:
    what = "generation tasks" if config.get("tasks") and config.model.kind == "decoder" else \
        f"this run's model.kind ({config.model.kind!r})"
    article = lambda kind: "an" if kind[0] in "aeiou" else "a"
    raise UserError(f"init.weights {source!r} holds {article(source_kind)} {source_kind} model, "
                    f"but {what} need {article(config.model.kind)} {config.model.kind}")


def check_sources(config, resuming: bool):
  """Every source the policy will read exists (only those it will read: a resumed run needs none)."""
  if resuming:
    return
  if config.init.resume:
    ckpt_lib.checkpoints_of(config.init.resume, "init.resume")
  elif config.init.weights and not config.init.weights.startswith("hf:"):
    ckpt_lib.checkpoints_of(config.init.weights, "init.weights")
    ckpt_lib.check_float_weights(config.init.weights, "init.weights")


def initial_state(config, own: ckpt_lib.Checkpointer, fresh, abstract, shardings,
                  feature_weights=lambda: None, trainable=lambda path: True,
                  adapter_only=False):
  """(state, data_state, description, base) by the policy; `fresh()` makes the scratch state
  (called only where the policy needs it: not for a checkpoint), `base` the `BaseReference` the
  run's checkpoints hold in place of their frozen parameters (None: full checkpoints).
  `feature_weights()`: (source, description) of a training feature's weights, or None;
  `trainable`: path -> bool; `adapter_only`: a PEFT run, whose checkpoints from `init.weights`
  hold the trained parameters and a reference to the frozen rest.

  A damaged checkpoint of our own workdir is moved aside and the one before it used; if none is
  left the run stops (one line naming what was moved) rather than silently start over."""
  step, restored = own.restore_newest(lambda s: own.restore(s, abstract), set_aside=True)
  if step is not None:
    state, data_state, base = restored
    return state, data_state, f"resumed from step {step}", base
  if own.moved_aside:
    raise UserError(f"no checkpoint in {own.directory!r} can be restored; moved aside: "
                    f"{'; '.join(own.moved_aside)}. Rerun the same command to start this run "
                    "afresh in this workdir, or use a new --workdir")
  if config.init.resume:
    other = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_of(config.init.resume, "init.resume"),
                                  use_async=False)
    step, restored = other.restore_newest(lambda s: other.restore(s, abstract))
    if step is None:
      raise UserError(f"init.resume: no checkpoint in {other.directory!r} can be restored (each "
                      "is damaged: see the warnings above)")
    state, data_state, base = restored
    return state, data_state, f"init.resume {config.init.resume} (step {step})", base
  given = feature_weights()
  if given is not None:
    source, description = given
    state, loaded, total = load_weights(fresh(), source, config.init.exclude, shardings)
    return state, {"next_step": 0}, f"{description} ({len(loaded)} of {total} arrays)", None
  if config.init.weights:
    source = ckpt_lib.weights_of(config.init.weights, config.model.scan_layers)
    state, loaded, total = load_weights(fresh(), source, config.init.exclude, shardings)
    base = base_reference(config, source, loaded, state.params, trainable) if adapter_only \
        else None  # a full fine-tuning run saves every parameter
    return (state, {"next_step": 0},
            f"init.weights {config.init.weights} ({len(loaded)} of {total} arrays)", base)
  return fresh(), {"next_step": 0}, "scratch", None


def base_reference(config, source: dict, loaded: list, params, trained):
  """The `BaseReference` of a PEFT run to the frozen parameters (`trained` false) it loaded from
  `source` (as cast into `params`)."""
  dtypes = {p: v.dtype for p, v in params_lib.flatten(params).items()}
  frozen = {p: np.asarray(source[p], dtypes[p]) for p in loaded if not trained(p)}
  return ckpt_lib.BaseReference.of(config.init.weights, config.model.scan_layers, frozen)


def load_weights(state, source: dict, exclude, shardings):
  """Copies the parameters of `source` that match ours by path and shape, minus `exclude`;
  returns (state, the paths loaded, the number of parameter arrays)."""
  excluded = params_lib.matches(exclude)
  loaded = []

  def pick(path, current, target_sharding):
    name = params_lib.path_str(path)
    value = source.get(name)
    if value is None or excluded(name) or tuple(value.shape) != tuple(current.shape):
      return current
    loaded.append(name)
    return jax.device_put(np.asarray(value, current.dtype), target_sharding)

  params = jax.tree_util.tree_map_with_path(pick, state.params, shardings.params)
  total = len(jax.tree.leaves(state.params))
  log.info("init.weights: loaded %d of %d parameter arrays", len(loaded), total)
  return state.replace(params=params), loaded, total

