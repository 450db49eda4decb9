"""`run(config, workdir) -> summary`: the one training loop, for every objective.

Reads top to bottom: check inputs -> mesh -> data -> model -> sharded state (initialisation
policy) -> jitted steps -> loop (log, evaluate, checkpoint) -> summary. Everything that can be
wrong with the input is checked before the first byte is written to the workdir.
"""
import dataclasses
import json
import logging
import math
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import checkpoint as ckpt_lib
from research import data as data_lib
from research import models, perf, sharding, tasks as tasks_lib, tracking
from research.data import tokenizer as tokenizer_lib
from research.tasks import mixture
from research.errors import UserError
from research.train import optim
from research.train.step import TrainState, derive_dropout_key, make_eval_step, make_train_step

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checks that need no device work and write nothing.
# ---------------------------------------------------------------------------------------------
def check_config(config):
  from research import validation  # pylint: disable=g-import-not-at-top
  validation.check_config(config)


def prepare_workdir(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from None


def check_batch(config, mesh):
  batch, dp = config.train.batch_size, sharding.data_parallel_size(mesh)
  accum = config.train.grad_accum_steps
  if batch % (dp * accum) or batch % jax.process_count():
    raise UserError(f"train.batch_size ({batch}) must be divisible by the data-parallel size "
                    f"(mesh data x fsdp = {dp}) times train.grad_accum_steps ({accum}), and by "
                    f"the {jax.process_count()} host(s)")


def resolve_vocab(config, tokenizer):
  """model.vocab_size = -1 takes the tokenizer's size, rounded up to a multiple of 128."""
  if config.model.vocab_size == -1:
    config.model.vocab_size = int(math.ceil(tokenizer.get_vocab_size() / 128) * 128)
  elif config.model.vocab_size < tokenizer.get_vocab_size():
    raise UserError(f"model.vocab_size ({config.model.vocab_size}) is smaller than the "
                    f"tokenizer's vocabulary ({tokenizer.get_vocab_size()})")


# ---------------------------------------------------------------------------------------------
# State: created already sharded; then the one initialisation policy.
# ---------------------------------------------------------------------------------------------
def max_predictions(config) -> int:
  return config.objective.max_predictions if config.get("objective") else 1


def dummy_inputs(config, batch_size=1):
  seq, shape = config.data.seq_len, (batch_size, config.data.seq_len)
  inputs = {"input_ids": jnp.zeros(shape, jnp.int32), "attention_mask": jnp.ones(shape, jnp.int32)}
  if config.model.kind == "encoder":
    inputs["token_type_ids"] = jnp.zeros(shape, jnp.int32)
    inputs["masked_positions"] = jnp.zeros((batch_size, max_predictions(config)), jnp.int32)
  else:
    inputs["segment_ids"] = jnp.ones(shape, jnp.int32)
  del seq
  return inputs


def create_sharded_state(model, tx, config, mesh, rules, rng):
  """Returns (state, abstract_state, shardings); parameters are born on their shards."""
  def init(rng):
    inputs = dummy_inputs(config)
    boxed = model.init({"params": rng, "dropout": rng}, inputs.pop("input_ids"), **inputs)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))

  # No mesh context here: flax's DenseGeneral would constrain its flat (pre-reshape) kernel.
  with nn.logical_axis_rules(rules):
    abstract_boxed = jax.eval_shape(init, rng)
    shardings = sharding.shardings_of(abstract_boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(abstract_boxed), shardings)
  return state, abstract, shardings


# Model fields a run keeps from its own config when it starts from a Hugging Face checkpoint.
OWN_MODEL_FIELDS = ("heads", "dtype", "param_dtype", "attention_impl", "num_labels")


def init_weights(config, load: bool):
  """Applies `config.init.weights`; returns its parameters (flat {path: array}) if `load`.

  'hf:DIR' sets config.model from the checkpoint (except OWN_MODEL_FIELDS) and, unless
  data.tokenizer is set, the tokenizer: a resumed run needs that as much as a new one.
  """
  source = config.init.weights
  if source.startswith("hf:"):
    from research.convert import hf  # pylint: disable=g-import-not-at-top
    directory = hf.resolve(source[3:])
    hf_model = hf.model_config_of(directory)
    for field, value in dataclasses.asdict(hf_model).items():
      if field not in OWN_MODEL_FIELDS:
        config.model[field] = value
    # Fine-tuning BERT's classifier reads the pooled output: add a (new) pooler if the checkpoint
    # has none (BertForMaskedLM saves none).
    config.model.pooler = hf_model.pooler or (bool(config.get("tasks")) and
                                              hf_model.classifier == "pooled")
    if not config.data.tokenizer:
      config.data.tokenizer = directory
    if not load:
      return None
    _, params = hf.load_pretrained(directory)
  elif not source:
    return None
  elif not load:
    _use_saved_tokenizer(config, source)
    return None
  else:
    _use_saved_tokenizer(config, source)
    ckpt = ckpt_lib.Checkpointer(_checkpoint_dir(source, "init.weights"), use_async=False)
    params = ckpt.restore_raw_state(ckpt.latest_step())["params"]
  return {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def _use_saved_tokenizer(config, workdir):
  """Weights from one of our runs come with its tokenizer (unless data.tokenizer is set)."""
  saved = os.path.join(workdir, "tokenizer.json")
  if not config.data.tokenizer and os.path.exists(saved):
    config.data.tokenizer = saved


def load_weights(state, source: dict, exclude, shardings):
  """Copies the parameters of `source` that match ours by path and shape, minus `exclude`."""
  excluded = [re.compile(p) for p in exclude]
  loaded = []

  def pick(path, current, target_sharding):
    name = optim.path_str(path)
    value = source.get(name)
    if (value is None or any(e.search(name) for e in excluded)
        or tuple(value.shape) != tuple(current.shape)):
      return current
    loaded.append(name)
    return jax.device_put(np.asarray(value, current.dtype), target_sharding)

  params = jax.tree_util.tree_map_with_path(pick, state.params, shardings.params)
  total = len(jax.tree.leaves(state.params))
  log.info("init.weights: loaded %d of %d parameter arrays", len(loaded), total)
  return state.replace(params=params), len(loaded), total


def to_host(tree):
  """Device outputs -> numpy; batch-sharded arrays are gathered from every host."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  def one(x):
    if jax.process_count() == 1 or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def _checkpoint_dir(path: str, key: str) -> str:
  for candidate in (os.path.join(path, "checkpoints"), path):
    if ckpt_lib.Checkpointer.exists(candidate):
      return candidate
  raise UserError(f"{key}: no checkpoint found in {path!r}")


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """Trains as `config` says, in `workdir` (resuming if it holds a checkpoint); returns the summary."""
  wall_start = time.time()
  config = config.copy_and_resolve_references()
  check_config(config)
  prepare_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh)
  check_batch(config, mesh)
  rules = sharding.rules_of(config)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               keep=config.ckpt.keep, use_async=config.ckpt.use_async)
  latest = ckpt.latest_step()
  pretrained = init_weights(config, load=latest is None and not config.init.resume)
  tasks, tokenizer = tasks_lib.build(config, workdir)
  resolve_vocab(config, tokenizer)
  head_specs = tuple(t.head_spec for t in tasks if hasattr(t, "head_spec"))
  if head_specs:  # fine-tuning: the tasks decide the heads (and their label counts)
    config.model.heads = head_specs
  model_cfg = models.ModelConfig.from_dict(config.model)
  if latest is not None:
    ckpt_lib.check_same_shapes(ckpt.saved_config(latest)["model"], config.model.to_dict(),
                               f"workdir {workdir!r}")
  tasks_lib.registry.check_heads(tasks, model_cfg)
  # --- All inputs checked: from here on the workdir is written. ---
  if jax.process_index() == 0:
    tokenizer_lib.save(tokenizer, workdir)
    if head_specs:
      tasks_lib.finetuning.save_labels(tasks, workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  model = models.build(model_cfg)
  tx, lr_schedule = optim.build(config)
  init_key, dropout_key = jax.random.split(jax.random.key(config.train.seed))
  dropout_key = derive_dropout_key(dropout_key, config.train.dropout_prng)
  state, abstract_state, state_shardings = create_sharded_state(
      model, tx, config, mesh, rules, init_key)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

  # One initialisation policy: own checkpoint > init.resume > init.weights > scratch.
  init_source, data_state = "scratch", {"next_step": 0}
  if latest is not None:
    state, data_state = ckpt.restore(latest, abstract_state)
    init_source = f"resumed from step {latest}"
  elif config.init.resume:
    other = ckpt_lib.Checkpointer(_checkpoint_dir(config.init.resume, "init.resume"),
                                  use_async=False)
    ckpt_lib.check_same_shapes(other.saved_config(other.latest_step())["model"],
                               config.model.to_dict(), f"init.resume {config.init.resume!r}")
    state, data_state = other.restore(other.latest_step(), abstract_state)
    init_source = f"init.resume {config.init.resume}"
  elif pretrained is not None:
    state, loaded, total = load_weights(state, pretrained, config.init.exclude, state_shardings)
    init_source = f"init.weights {config.init.weights} ({loaded} of {total} arrays)"
  start_step = int(data_state["next_step"])  # where the data iterator resumes
  if start_step != int(state.step):
    raise UserError(f"checkpoint is inconsistent: state at step {int(state.step)}, data "
                    f"iterator at step {start_step}")
  log.info("model: %s, %d parameters; %s", model_cfg.kind, n_params, init_source)

  batch_sharding = sharding.batch_sharding(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    train_steps = [jax.jit(
        make_train_step(model, task.loss, tx, lr_schedule, dropout_key,
                        config.train.grad_accum_steps),
        in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
        donate_argnums=0) for task in tasks]
    eval_steps = [jax.jit(make_eval_step(model, task.eval_outputs),
                          in_shardings=(state_shardings.params, batch_sharding)) for task in tasks]

  def evaluate(params, split="eval", report_dir=None) -> dict:
    out = {}
    for task, eval_step in zip(tasks, eval_steps):
      if split not in task.splits:
        continue
      def run_batches(batches, num_steps, eval_step=eval_step):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
          for _, batch in data_lib.device_batches(batches.host_batch, 0, num_steps, batch_sharding):
            yield to_host(eval_step(params, batch))
      out.update(task.evaluate(split, run_batches, report_dir))
    return out

  schedule = mixture.Schedule([getattr(task, "train_size", 1) for task in tasks],
                              config.get("mixture", {}).get("kind", "proportional"),
                              config.get("mixture", {}).get("temperature", 1.0), config.train.seed)

  def host_batch(step):
    task_index, task_step = schedule(step) if len(tasks) > 1 else (0, step)
    return task_index, tasks[task_index].train.host_batch(task_step)

  steps = config.train.steps
  tracker = tracking.Tracker(workdir, start_step=start_step, total_steps=steps,
                             tensorboard=config.logging.tensorboard,
                             progress=config.logging.progress)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  flops_per_step = perf.train_flops_per_step(model_cfg, config.data.seq_len,
                                             config.train.batch_size,
                                             max_predictions(config))
  peak = perf.peak_flops_per_device(config.logging.peak_tflops)
  config_dict = json.loads(config.to_json_best_effort())

  best = None
  if config.evals.get("best_metric"):
    best = ckpt_lib.BestCheckpoint(os.path.join(workdir, "best"), config.evals.best_metric,
                                   config.evals.best_mode, config.evals.patience, tracker.history)
  stopped = bool(data_state.get("stopped_early"))

  # --- The loop. ---
  compile_seconds, timer_step, timer = None, start_step, time.time()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for step, (task_index, batch) in data_lib.device_batches(
        host_batch, start_step, start_step if stopped else steps, batch_sharding):
      state, metrics = train_steps[task_index](state, batch)
      done = step + 1
      if compile_seconds is None:  # the only extra sync: time the first (compiling) step
        jax.block_until_ready(metrics)
        compile_seconds, timer_step, timer = time.time() - timer, done, time.time()
      record = {}
      if done % config.logging.every_steps == 0 or done == steps or done == start_step + 1:
        record.update(jax.device_get(metrics))
        now = time.time()
        record["perf/tokens_per_sec"] = record["perf/mfu"] = None  # the compiling step
        if done > timer_step:
          steps_per_sec = (done - timer_step) / (now - timer)
          record["perf/tokens_per_sec"] = steps_per_sec * tokens_per_step
          if peak:
            record["perf/mfu"] = flops_per_step * steps_per_sec / (peak * jax.device_count())
        timer_step, timer = done, now
      if done % config.evals.every_steps == 0 or done == steps:
        record.update(evaluate(state.params))
        if best is not None:
          best.update(done, record, state.params)
          stopped = best.should_stop
      if record:
        tracker.write(done, record)
      if done % config.ckpt.every_steps == 0 or done == steps or stopped:
        ckpt.save(done, state, {"next_step": done, "stopped_early": stopped}, config_dict)
      tracker.advance(1)
      if stopped:
        log.info("early stopping at step %d: %s has not improved for %d evaluations", done,
                 best.metric, best.stale)
        break

  final_eval = tracker.latest("eval/") or evaluate(state.params)
  ckpt.wait()
  ckpt.close()
  summary = {"step": int(state.step), "params/total": n_params, "params/trainable": n_params,
             "wall_seconds": time.time() - wall_start, "init": init_source,
             "perf/compile_seconds": compile_seconds, **final_eval}
  # Held-out evaluation and reports, with the best parameters when a best metric is kept.
  final_params = state.params
  if best is not None and best.step is not None:
    final_params = best.restore(abstract_state.params)
    summary.update({"best/step": best.step, f"best/{best.metric}": best.value,
                    "stopped_early": stopped})
    best.close()
  if any(hasattr(t, "head_spec") for t in tasks):
    report_dir = os.path.join(workdir, "reports") if jax.process_index() == 0 else None
    summary.update(evaluate(final_params, "test", report_dir))
    evaluate(final_params, "eval", report_dir)  # writes the eval split's reports
  for task in tasks:
    summary.update(task.stats if len(tasks) == 1 else
                   {f"{task.name}/{k}": v for k, v in task.stats.items()})
  tracker.finish(summary)
  return summary
