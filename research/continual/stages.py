"""The task set of one stage of a continual-learning run (`research.tasks.build` calls `build`).

Every stage's run holds every stage's task, so the model has every head from the first stage on
(one head per task, or the one shared head of a class-incremental split) and each stage's final
evaluation covers all tasks: a row of the accuracy matrix. Only the stage's own task trains
(`TaskSet.schedule` always picks it). In a class-incremental run the classes of later stages are
masked out of the shared head's logits (loss and predictions): a model after stage i predicts
among the classes seen so far.

With replay the stage's batches mix buffer rows into its own (`replay.MixedBatches`); every row
carries `task`, its stage, and each task's objectives read only its own rows (task-incremental:
each through its own head; class-incremental: one head, so one objective over all rows).
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from research.continual import replay
from research.continual.settings import ContinualConfig
from research.data import cache as data_cache
from research.data import encoding, labelled
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError
from research.objectives import Objective
from research.tasks.base import Task
from research.tasks.classification import ClassificationTask, label_names
from research.tasks.finetuning import training_texts
from research.tasks.taskset import TaskSet

TASK_FIELD = "task"  # a replayed batch's per-row stage index
MASKED_LOGIT = -1e9  # an unseen class's logit: no probability, no gradient


def current_stage(config) -> int:
  """The 0-based stage this run trains (`continual.stage`, 1-based, set by the continual run)."""
  stage = int(config.continual.stage)
  if stage < 1:
    raise UserError("continual.stage is set by the continual run for each stage; run "
                    "python -m research.main with configs/continual.py, which trains them in turn")
  return stage - 1


def read_sources(config, settings: ContinualConfig) -> tuple[dict, dict]:
  """({task: its rows by split}, {task: its class names}) of the tasks the stages read."""
  sources = sorted({s.source for s in settings.stages})
  rows = {src: labelled.load_rows(config.tasks[src]) for src in sources}
  return rows, {src: label_names("classification", rows[src]["train"]) for src in sources}


def build(config, workdir: str) -> TaskSet:
  settings = ContinualConfig.of_run(config)
  current = current_stage(config)
  rows, classes = read_sources(config, settings)
  settings.check_classes(classes)
  texts = [t for src in rows for t in training_texts(rows[src])]
  tokenizer = tokenizer_lib.get_tokenizer(config.data, "encoder", [texts], workdir,
                                          data_cache.of_config(config))
  shared = settings.scenario == "class"
  seen = {c for s in settings.stages[:current + 1] for c in (s.classes or classes[s.source])}
  tasks = []
  for stage in settings.stages:
    kept = stage.classes or tuple(classes[stage.source])
    stage_rows = {split: [r for r in split_rows if str(r["label"]) in kept]
                  for split, split_rows in rows[stage.source].items()}
    names = classes[stage.source] if shared else [c for c in classes[stage.source] if c in kept]
    task = ClassificationTask(stage.name, config.tasks[stage.source], stage_rows, tokenizer,
                              config, "classification" if shared else stage.name, names)
    mask = np.asarray([n in seen for n in names]) if shared else None
    task.labels = dict(task.labels, source=stage.source)  # research.predict reads the task
    tasks.append(StageTask(task, mask))
  tasks[current] = training_stage(config, settings, tasks, current, workdir)
  return TaskSet(tasks, tokenizer, schedule=lambda step: (current, step))


class StageTask(Task):
  """A stage's `ClassificationTask`, with the shared head's unseen classes masked (`seen`: a bool
  per class, or None) and, for the stage that trains, its batches and objectives replaced."""

  def __init__(self, task: ClassificationTask, seen: np.ndarray | None, train=None,
               objectives=None):
    self.task, self.seen = task, seen
    self.name, self.heads, self.splits = task.name, task.heads, task.splits
    self.stats, self.labels, self.final_splits = task.stats, task.labels, task.final_splits
    self.train_size, self.train_features = task.train_size, task.train_features
    self.train = train or task.train
    self.objectives = objectives or tuple(masked(o, task.head, seen) for o in task.objectives)

  def eval_outputs(self, outputs, batch):
    return self.task.eval_outputs(mask_outputs(outputs, self.task.head, self.seen), batch)

  def evaluate(self, split, context) -> dict:
    return self.task.evaluate(split, context)


def training_stage(config, settings: ContinualConfig, tasks: list, current: int,
                   workdir: str) -> StageTask:
  """The stage that trains: with replay (after the first stage), its batches mix in the buffer
  saved in `workdir` and the objectives of every task seen read their own rows."""
  stage = tasks[current]
  if settings.method != "replay" or current == 0:
    return stage
  buffer = replay.load(workdir)
  if buffer is None:
    raise UserError(f"no replay buffer ({replay.BUFFER_FILE}) in {workdir!r}: the continual run "
                    "writes it before the stage starts")
  batch = config.train.batch_size
  replayed = round(settings.replay_ratio * batch)
  info = encoding.host_info()
  if replayed % info["process_count"] or (batch - replayed) % info["process_count"]:
    raise UserError(f"continual.replay.ratio x train.batch_size = {replayed} replayed rows and "
                    f"{batch - replayed} others must each divide among the "
                    f"{info['process_count']} hosts")
  features = [dict(tasks[j].train_features[i], **{TASK_FIELD: j}) for j, i in buffer["items"]]
  own = [dict(f, **{TASK_FIELD: current}) for f in stage.train_features]
  train = replay.MixedBatches(encoding.train_batches(own, config, batch - replayed), features,
                              replayed, config.train.seed, current, **info)
  if settings.scenario == "class":  # one head: its objective reads every row
    objectives = stage.objectives
  else:
    objectives = tuple(gated(o, j) for j in range(current + 1) for o in tasks[j].objectives)
  return StageTask(stage.task, stage.seen, train, objectives)


def mask_outputs(outputs: dict, head: str, seen):
  if seen is None:
    return outputs
  key = f"{head}_logits"
  logits = outputs[key].astype(jnp.float32)
  return {**outputs, key: jnp.where(jnp.asarray(seen), logits, MASKED_LOGIT)}


def masked(objective: Objective, head: str, seen) -> Objective:
  """`objective` on logits whose unseen classes are masked (unchanged if `seen` is None)."""
  if seen is None:
    return objective
  predictions = objective.predictions and (
      lambda outputs, batch: objective.predictions(mask_outputs(outputs, head, seen), batch))
  return dataclasses.replace(
      objective, sums=lambda outputs, batch: objective.sums(mask_outputs(outputs, head, seen),
                                                            batch),
      predictions=predictions)


def gated(objective: Objective, task: int) -> Objective:
  """`objective` counting only the rows of stage `task` (the others get row weight 0)."""
  def only(batch):
    mask = (batch[TASK_FIELD] == task).astype(jnp.int32)
    return {**batch, "row_mask": mask * batch["row_mask"] if "row_mask" in batch else mask}
  predictions = objective.predictions and (
      lambda outputs, batch: objective.predictions(outputs, only(batch)))
  return dataclasses.replace(objective, count=lambda batch: objective.count(only(batch)),
                             sums=lambda outputs, batch: objective.sums(outputs, only(batch)),
                             predictions=predictions)
