"""`run(config, workdir) -> summary`: the one training loop, for every task.

Reads top to bottom in phases:
  resolve       (research.train.resolve) the config, the data as a TaskSet, the mesh: every check
                of the input, nothing written
  write         the workdir's lock (research.workdir: one live run per workdir), then its
                config.json, tokenizer.json, labels.json
  build_state   model, optimizer, sharded state, the initialisation policy
  compile       the jitted train step of each task and its eval step
  train         the loop: log, evaluate, keep the best, checkpoint, stop early; stop on a
                preemption signal (saved) or a divergence (not saved)
  finish        held-out evaluation, reports, summary
The trainer drives tasks only through the `TaskSet` interface (research.tasks.taskset), and
training features (PEFT, pruning, distillation, continual penalties, EMA) only through the
`Feature` hooks (research.train.feature) of the features `registry` lists: it names none.
"""
import dataclasses
import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from research import checkpoint as ckpt_lib
from research import data as data_lib
from research import compile_cache, compile_options, models, perf, sharding, tracking
from research import params as params_lib
from research.errors import Diverged, Preempted, RunStopped, UserError
from research.tasks import EvalContext
from research.train import initialization, nonfinite, optim, preemption
from research.train import state as state_lib
from research.train.resolve import Run, resolve
from research.train.step import TrainState, derive_dropout_key, make_eval_step, make_train_step
from research.workdir import WorkdirLock

log = logging.getLogger(__name__)


def run(config, workdir: str, registry) -> dict:
  """Trains as `config` says, in `workdir` (resuming if it holds a checkpoint), with the training
  features of `registry` (feature classes) the config turns on; returns the summary."""
  wall_start, compiles = time.time(), compile_cache.Tally.start()
  compile_cache.use(compile_cache.of_config(config))  # before the first program is compiled
  r = resolve(config, workdir, registry)
  check_writable(workdir)
  lock = WorkdirLock(workdir, jax.process_index())  # a second run on this workdir stops here
  try:
    write_run_files(r, workdir)
    built = build_state(r, workdir)
    steps = compile_steps(r, built)
    # A SIGTERM/SIGINT from here on saves (or has saved) and stops with exit code 3: during the
    # final evaluation too, which may outlast a preemption's grace period.
    with preemption.Preemption(built.ckpt.manager.reached_preemption) as preempt:
      try:
        trained = train(r, built, steps, workdir, preempt)
        return finish(r, built, steps, trained, workdir, wall_start, compiles)
      except RunStopped as stop:
        tracking.append_summary(workdir, stop.outcome, int(built.data_state["next_step"]),
                                {"step": stop.step, "wall_seconds": time.time() - wall_start})
        raise
  finally:
    lock.release()


# ---------------------------------------------------------------------------------------------
# write: the first bytes of this run go to the workdir only after `resolve` succeeded.
# ---------------------------------------------------------------------------------------------
def check_writable(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes sharing a workdir must not remove each other's.
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from None


def write_run_files(r: Run, workdir: str):
  if jax.process_index() == 0:
    r.task_set.save(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(r.config.to_json_best_effort(indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# build_state: parameters born on their shards, then the one initialisation policy.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Built:
  model: Any
  tx: Any
  lr_schedule: Any
  dropout_key: Any
  state: TrainState
  abstract_state: Any
  shardings: Any
  data_state: dict
  init_source: str
  ckpt: ckpt_lib.Checkpointer
  base: ckpt_lib.BaseReference | None  # adapter-only checkpoints refer to it (None: full ones)


def build_state(r: Run, workdir: str) -> Built:
  config = r.config
  model = models.build(r.model_cfg)
  tx, lr_schedule = optim.build(config, r.features)
  init_key, dropout_key = jax.random.split(jax.random.key(config.train.seed))
  dropout_key = derive_dropout_key(dropout_key, config.train.dropout_prng)
  abstract, shardings, fresh = state_lib.plan_sharded_state(model, tx, config, r.mesh, r.rules,
                                                            init_key)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               keep=config.ckpt.keep, use_async=config.ckpt.use_async,
                               clean_unfinished=True)
  feature_weights = lambda: next((w for w in (f.initial_weights(r) for f in r.features)
                                   if w is not None), None)
  state, data_state, source, base = initialization.initial_state(
      config, ckpt, fresh, abstract, shardings, feature_weights, r.trainable,
      adapter_only=r.model_cfg.peft.active)
  if int(data_state["next_step"]) != int(state.step):
    raise UserError(f"checkpoint is inconsistent: state at step {int(state.step)}, data "
                    f"iterator at step {data_state['next_step']}")
  log.info("model: %s, %d parameters (%s trained); %s", r.model_cfg.kind,
           state_lib.count_params(state.params), trained_share(r, state.params), source)
  return Built(model, tx, lr_schedule, dropout_key, state, abstract, shardings, data_state,
               source, ckpt, base)


def trained_share(r: Run, params) -> str:
  """'all' or, with frozen parameters (PEFT, `optim.trainable`), 'N = P%'."""
  if not optim.trainable_patterns(r.config, r.features):
    return "all"
  trained = state_lib.count_params(params, r.trainable)
  return f"{trained} = {100 * trained / state_lib.count_params(params):.2f}%"


# ---------------------------------------------------------------------------------------------
# compile: one train step per task (its objectives), one eval step per task.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Steps:
  train: list
  eval: list
  batch_sharding: Any


def compile_steps(r: Run, b: Built) -> Steps:
  """Each train step takes the features' `step_inputs` (a teacher's parameters, a penalty's
  anchor), already on the mesh, as its third argument `inputs`, {feature name: arrays}."""
  batch_sharding = sharding.batch_sharding(r.mesh)
  tasks = r.task_set.tasks
  inputs = {f.name: data for f in r.features
            if (data := f.step_inputs(r, b.abstract_state.params)) is not None}
  input_shardings = jax.tree.map(lambda x: x.sharding, inputs)
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(r.rules):
    train_steps = [CompiledStep(jax.jit(
        make_train_step(b.model, task.objectives, b.tx, b.lr_schedule, b.dropout_key,
                        r.config.train.grad_accum_steps, nonfinite.limit(r.config.train),
                        r.trainable, r.features),
        in_shardings=(b.shardings, batch_sharding, input_shardings),
        out_shardings=(b.shardings, None), donate_argnums=0,
        compiler_options=compile_options.for_step(compile_options.TRAIN)), inputs)
        for task in tasks]
    eval_steps = [jax.jit(make_eval_step(b.model, task.eval_outputs),
                          in_shardings=(b.shardings.params, batch_sharding),
                          compiler_options=compile_options.for_step(compile_options.FORWARD))
                  for task in tasks]
  return Steps(train_steps, eval_steps, batch_sharding)


class CompiledStep:
  """A jitted train step (its features' `inputs` bound), compiled ahead of its first call (when
  the batch's shapes are known) so the run can report the memory the compiled step holds
  (`perf.compiled_bytes`)."""

  def __init__(self, jitted, inputs=None):
    self.jitted, self.compiled, self.memory_bytes = jitted, None, None
    self.inputs = inputs or {}

  def __call__(self, state, batch):
    if self.compiled is None:
      self.compiled = self.jitted.lower(state, batch, self.inputs).compile()
      self.memory_bytes = perf.compiled_bytes(self.compiled)
    return self.compiled(state, batch, self.inputs)


def evaluate(r: Run, steps: Steps, params, split="eval", report_dir=None, final=False) -> dict:
  """Every task's metrics on `split` (tasks without that split are skipped; with `final`, so are
  tasks that do not list it in their `final_splits`); the tasks that list it write their reports
  to `report_dir`, if given."""
  out = {}
  for task, eval_step in zip(r.task_set.tasks, steps.eval):
    if split not in task.splits or (final and split not in task.final_splits):
      continue
    task_reports = report_dir if split in task.final_splits else None
    def run_batches(batches, num_steps, eval_step=eval_step):
      with jax.set_mesh(r.mesh), nn.logical_axis_rules(r.rules):
        for _, batch in data_lib.device_batches(batches.host_batch, 0, num_steps,
                                                steps.batch_sharding):
          yield to_host(eval_step(params, batch))
    out.update(task.evaluate(split, EvalContext(run_batches, params, task_reports,
                                                       r.model_cfg, r.mesh, r.rules)))
  return out


def evaluator(r: Run, steps: Steps):
  """`evaluate(params, split='eval')`: the tasks' metrics of any parameters (a feature's: the EMA
  weights'); the test split as the final evaluation takes it."""
  return lambda params, split="eval": evaluate(r, steps, params, split, final=split != "eval")


def to_host(tree):
  """Device outputs -> numpy; batch-sharded arrays are gathered from every host."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  def one(x):
    if jax.process_count() == 1 or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


# ---------------------------------------------------------------------------------------------
# train: the loop.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Trained:
  state: TrainState
  tracker: tracking.Tracker
  best: Any  # ckpt_lib.BestCheckpoint or None
  stopped: bool
  compile_seconds: float | None
  preempt: preemption.Preemption  # still listening during `finish`
  eval_reported: bool = False  # the evaluation of the last step's parameters wrote the eval
                               # split's reports


def report_dir_of(workdir: str) -> str | None:
  """Where the final evaluation's reports go (process 0 writes them)."""
  return os.path.join(workdir, "reports") if jax.process_index() == 0 else None


def train(r: Run, b: Built, steps: Steps, workdir: str, preempt: preemption.Preemption) -> Trained:
  """Steps from the data position to `train.steps`. A preemption signal saves and raises
  `Preempted`; a divergence (`train.nonfinite`) raises `Diverged` without saving."""
  config, state, total = r.config, b.state, r.config.train.steps
  start = int(b.data_state["next_step"])
  tracker = tracking.Tracker(workdir, start_step=start, total_steps=total,
                             tensorboard=config.logging.tensorboard,
                             progress=config.logging.progress, config=config)
  best = None
  if config.evals.get("best_metric"):
    best = ckpt_lib.BestCheckpoint(os.path.join(workdir, "best"), config.evals.best_metric,
                                   config.evals.best_mode, config.evals.patience, tracker.history,
                                   b.base)
  stopped = bool(b.data_state.get("stopped_early"))
  # The evaluation at `train.steps` writes the eval split's reports: when its parameters are the
  # final ones (no best checkpoint, or the best is that step's), `finish` need not evaluate the
  # eval split again for them; otherwise `finish` rewrites them from the best parameters.
  eval_reported = False
  throughput = Throughput(r, start)
  saver = Saver(r, b)
  train_batch = r.task_set.train_batch
  for feature in r.features:  # e.g. a teacher's stored logits ride with the batches
    train_batch = feature.train_batches(r, train_batch, workdir)
  try:
    with jax.set_mesh(r.mesh), nn.logical_axis_rules(r.rules):
      for step, (task_index, batch) in data_lib.device_batches(
          train_batch, start, start if stopped else total, steps.batch_sharding):
        state, metrics = steps.train[task_index](state, batch)
        done = step + 1
        record = throughput.record(done, metrics, log_now=(
            done % config.logging.every_steps == 0 or done == total or done == start + 1))
        evaluate_now = done % config.evals.every_steps == 0 or done == total
        diverged = saver.diverged(state) if record or evaluate_now else None  # synced already
        if evaluate_now and not diverged:
          eval_reported = done == total
          record.update(evaluate(r, steps, state.params,
                                 report_dir=report_dir_of(workdir) if eval_reported else None))
          for feature in r.features:  # e.g. the real sparsity; the EMA weights' metrics
            record.update(feature.evaluated(state, evaluator(r, steps)))
          if best is not None:
            best.update(done, record, state.params)
            stopped = best.should_stop
        if record:
          tracker.write(done, record)
        if diverged:
          raise diverged
        preempted = preempt.requested(done)
        if done % config.ckpt.every_steps == 0 or done == total or stopped or preempted:
          saver.save(done, state, stopped)
        tracker.advance(1)
        if preempted:
          raise Preempted(f"preempted ({preempt.signal_name}) at step {done}: saved "
                          f"{saver.path(done)}; rerun the same command to resume", done)
        if stopped:
          log.info("early stopping at step %d: %s has not improved for %d evaluations", done,
                   best.metric, best.stale)
          break
  except RunStopped as stop:
    b.ckpt.wait()  # the last save (a preemption's, or an earlier one) is complete on disk
    tracker.close(stop)
    raise
  return Trained(state, tracker, best, stopped, throughput.compile_seconds, preempt,
                 eval_reported)


class Saver:
  """The loop's checkpoint saves, each after checking the state is finite (`nonfinite.check`)."""

  def __init__(self, r: Run, b: Built):
    self.ckpt, self.train_config, self.base = b.ckpt, r.config.train, b.base
    self.config_dict = json.loads(r.config.to_json_best_effort())
    self.trainable = r.trainable
    # Checked on resume (`checkpoint.check_same_tokenizer`): ids mean the same tokens.
    self.tokenizer_sha256 = ckpt_lib.tokenizer_fingerprint(r.task_set.tokenizer)

  def diverged(self, state) -> Diverged | None:
    """The divergence `state` stops on, or None (waits for the step: call where it is synced)."""
    health = jax.device_get(state.health)
    if not nonfinite.reached(health, self.train_config):
      return None
    trained, _ = params_lib.split(state.params, self.trainable)  # what the step checked
    return nonfinite.divergence(health, trained, self.train_config, self.ckpt.latest_step())

  def save(self, done: int, state, stopped: bool):
    diverged = self.diverged(state)
    if diverged:
      raise diverged
    self.ckpt.save(done, state, {"next_step": done, "stopped_early": stopped,
                                 "tokenizer_sha256": self.tokenizer_sha256}, self.config_dict,
                   self.base)

  def path(self, step: int) -> str:
    return os.path.join(self.ckpt.directory, str(step))


class Throughput:
  """Fetches a step's metrics when they are logged, adding tokens/s and MFU since the last log.

  The only extra host sync: the first (compiling) step is waited for, to time compilation.
  """

  def __init__(self, r: Run, start: int):
    config = r.config
    self.tokens_per_step = config.train.batch_size * config.data.seq_len
    self.flops_per_step = perf.train_flops_per_step(
        r.model_cfg, config.data.seq_len, config.train.batch_size,
        state_lib.max_predictions(config))
    self.peak = perf.peak_flops_per_device(config.logging.peak_tflops)
    self.compile_seconds, self.timer_step, self.timer = None, start, time.time()

  def record(self, done: int, metrics, log_now: bool) -> dict:
    if self.compile_seconds is None:
      jax.block_until_ready(metrics)
      self.compile_seconds = time.time() - self.timer
      self.timer_step, self.timer = done, time.time()
    if not log_now:
      return {}
    record = dict(jax.device_get(metrics))
    now = time.time()
    record["perf/tokens_per_sec"] = record["perf/mfu"] = None  # the compiling step
    if done > self.timer_step:
      steps_per_sec = (done - self.timer_step) / (now - self.timer)
      record["perf/tokens_per_sec"] = steps_per_sec * self.tokens_per_step
      if self.peak:
        record["perf/mfu"] = self.flops_per_step * steps_per_sec / (self.peak * jax.device_count())
    self.timer_step, self.timer = done, now
    return record


# ---------------------------------------------------------------------------------------------
# finish: held-out evaluation with the best parameters, reports, summary.
# ---------------------------------------------------------------------------------------------
def finish(r: Run, b: Built, steps: Steps, t: Trained, workdir: str, wall_start: float,
           compiles: compile_cache.Tally) -> dict:
  final_eval = t.tracker.latest("eval/") or evaluate(r, steps, t.state.params)
  b.ckpt.wait()
  b.ckpt.close()
  stop_if_preempted(t, b)  # the last save is complete on disk: stopping here loses nothing
  trainable = r.trainable
  summary = {"step": int(t.state.step), "params/total": state_lib.count_params(t.state.params),
             "params/trainable": state_lib.count_params(t.state.params, trainable),
             "wall_seconds": time.time() - wall_start, "init": b.init_source,
             "perf/compile_seconds": t.compile_seconds,
             "perf/step_memory_bytes": max((s.memory_bytes or 0 for s in steps.train), default=0)
             or None, **compiles.summary(), **final_eval}
  final_params, final_are_last = t.state.params, True
  if t.best is not None and t.best.step is not None:
    if t.best.step != int(t.state.step):  # else the best parameters are these, bit for bit
      final_params, final_are_last = t.best.restore(b.abstract_state.params), False
    summary.update({"best/step": t.best.step, f"best/{t.best.metric}": t.best.value,
                    "stopped_early": t.stopped})
    t.best.close()
  summary.update(held_out_steps(t))
  report_dir = report_dir_of(workdir)
  summary.update(evaluate(r, steps, final_params, "test", report_dir, final=True))
  stop_if_preempted(t, b)
  if not (t.eval_reported and final_are_last):  # the eval split's reports, of the final params
    evaluate(r, steps, final_params, "eval", report_dir, final=True)
    stop_if_preempted(t, b)
  summary.update(r.task_set.stats)
  for feature in r.features:  # e.g. AdaLoRA's ranks, the sparsity of the parameters tested
    summary.update(feature.finish(final_params, t.state, workdir, evaluator(r, steps)))
    stop_if_preempted(t, b)
  t.tracker.finish(summary)
  return summary


def held_out_steps(t: Trained) -> dict:
  """Which step each held-out figure is from: the summary's eval/* are the last evaluation's
  (`eval_step`); test/* and the reports are of `final_step`'s parameters (the best step's when a
  best checkpoint was kept). When they differ, one log line says so too."""
  eval_step = max((r["step"] for r in t.tracker.history if any(k.startswith("eval/") for k in r)),
                  default=int(t.state.step))
  kept = t.best is not None and t.best.step is not None
  final_step = t.best.step if kept else int(t.state.step)
  if final_step != eval_step:
    log.info("final evaluation (test split, reports) with the parameters of step %d%s; the "
             "summary's eval/* are from the evaluation at step %d", final_step,
             f" (best {t.best.metric})" if kept else "", eval_step)
  return {"eval_step": eval_step, "final_step": final_step}


def stop_if_preempted(t: Trained, b: Built):
  """A SIGTERM/SIGINT during `finish` stops the run as one during training does (`Preempted`,
  exit code 3), once the last checkpoint is complete: a rerun trains nothing and finishes. With
  several processes jax's preemption service owns the signal, and they finish instead."""
  if t.preempt.signal_name is None or jax.process_count() > 1:
    return
  step = int(t.state.step)
  stop = Preempted(f"preempted ({t.preempt.signal_name}) during the final evaluation at step "
                   f"{step}: saved {os.path.join(b.ckpt.directory, str(step))}; rerun the same "
                   "command to finish", step)
  t.tracker.close(stop)
  raise stop
