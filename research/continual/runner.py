"""`run(config, workdir) -> summary`: a continual-learning run, one stage after another.

Each stage is a training run like any other (`research.train.run`) in its own folder,
initialised from the stage before (`init.weights`; a LoRA-per-task run starts every stage from
the base instead), with every task's head in the model and its final evaluation covering every
task. Between stages this module does what the method needs, each result a file of the stage's
folder written before the stage is marked done (`stage.json`):
  ewc      after the stage: its diagonal Fisher, folded into the running one (fisher.npz)
  replay   before the stage: the reservoir after the previous stages (replay.json)
A rerun of the same command skips the stages marked done and resumes the one in progress from
its own checkpoints (its replay buffer and the previous stage's Fisher are files, its heads are
in its checkpoint): the uninterrupted run's numbers, bit for bit.

WORKDIR/
  config.json                     this run's config
  stages/stage<k>_<task>/         stage k: a workdir like any run's (predict reads it)
  metrics.jsonl                   one record per stage: its row of R (`matrix.row_record`)
  summary.json                    R, average accuracy, BWT, forgetting, FWT (`matrix.summary`)
  continual_R.png, continual_accuracy.png
"""
import json
import logging
import os
import time

import numpy as np

from research import checkpoint as ckpt_lib
from research import models, tracking, validation
from research.continual import matrix, penalty, replay, stages
from research.continual.settings import ContinualConfig
from research.errors import UserError
from research.train import initialization
from research.workdir import WorkdirLock

log = logging.getLogger(__name__)
STAGE_DONE = "stage.json"
HEATMAP, CURVES = "continual_R.png", "continual_accuracy.png"


def run(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from research import features  # pylint: disable=g-import-not-at-top
  from research.train import trainer  # pylint: disable=g-import-not-at-top
  wall_start = time.time()
  config = config.copy_and_resolve_references()
  settings = check(config)
  initialization.check_sources(config, resuming=False)
  initialization.configure(config)  # an HF base fixes the model's shape and tokenizer for all
  check_same_sequence(config, workdir)
  trainer.check_writable(workdir)
  lock = WorkdirLock(workdir, jax.process_index())
  try:
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    names = [s.name for s in settings.stages]
    rows, trained = [], []
    for k, stage in enumerate(settings.stages):
      stage_dir = stage_workdir(workdir, k, settings)
      done = read_done(stage_dir)
      if done is None:
        log.info("continual: stage %d of %d, %s (%s)", k + 1, len(names), stage.name,
                 settings.method)
        stage_cfg = stage_config(config, settings, k, workdir)
        if settings.method == "replay" and k:
          prepare_replay(settings, config, workdir, k, stage_dir)
        summary = trainer.run(stage_cfg, stage_dir, features.REGISTRY)
        if settings.method == "ewc" and k + 1 < len(names):
          estimate_fisher(stage_cfg, settings, workdir, k, stage_dir)
        done = {"row": accuracy_row(summary, settings, rows, k),
                "params/trainable": summary["params/trainable"],
                "params/total": summary["params/total"],
                "wall_seconds": summary["wall_seconds"]}
        write_done(stage_dir, done)
      rows.append(done["row"])
      trained.append(done)
      write_progress(workdir, np.asarray(rows), names, config, settings)
    R = np.asarray(rows)
    summary = {"step": len(names) * config.train.steps, **matrix.summary(R, names,
                                                                        settings.reference),
               "continual/method": settings.method, "continual/scenario": settings.scenario,
               "params/trainable": max(d["params/trainable"] for d in trained),
               "params/total": max(d["params/total"] for d in trained),
               "stages/wall_seconds": sum(d["wall_seconds"] for d in trained),
               "wall_seconds": time.time() - wall_start}
    if jax.process_index() == 0:
      with open(os.path.join(workdir, tracking.SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    log.info("continual: average accuracy %.4f, BWT %s", summary["continual/average_accuracy"],
             summary.get("continual/bwt"))
    return summary
  finally:
    lock.release()


def check(config) -> ContinualConfig:
  """Every value of the sequence, the data's classes included, before anything is written
  (the values each stage's run checks too: before this run writes its config.json)."""
  validation.check_config(config)
  settings = ContinualConfig.of_run(config)
  if int(config.continual.stage) != 0 or config.continual.previous or config.continual.base:
    raise UserError("continual.stage, continual.previous and continual.base are set by the run "
                    "for each stage; leave them unset")
  settings.check_classes(stages.read_sources(config, settings)[1])
  return settings


def check_same_sequence(config, workdir: str):
  """A workdir holding another sequence's stages is refused (its finished stages would be
  reused as if they were this run's)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    ckpt_lib.check_same_run(saved, json.loads(config.to_json_best_effort()),
                            f"workdir {workdir!r}")


def stage_workdir(workdir: str, k: int, settings: ContinualConfig) -> str:
  return os.path.join(workdir, "stages", settings.stages[k].folder)


def stage_config(config, settings: ContinualConfig, k: int, workdir: str):
  """The config of stage k's run: the sequence's, with the stage, where its weights come from,
  and the previous stage's folder (EWC's anchor and Fisher)."""
  c = config.copy_and_resolve_references()
  c.continual.stage = k + 1
  c.continual.base = config.init.weights
  c.continual.previous = stage_workdir(workdir, k - 1, settings) if k else ""
  if k and settings.method != "lora":
    c.init.weights = c.continual.previous
  return c


def read_done(stage_dir: str) -> dict | None:
  path = os.path.join(stage_dir, STAGE_DONE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_done(stage_dir: str, done: dict):
  path = os.path.join(stage_dir, STAGE_DONE)
  with open(path + ".tmp", "w") as f:
    json.dump(done, f, indent=2)
  os.replace(path + ".tmp", path)


def accuracy_row(summary: dict, settings: ContinualConfig, rows: list, k: int) -> list:
  """Row k of R from the stage's final evaluation of every task. With a LoRA per task, task j < k
  is read through its own adapter and head (stage j's), which no later stage changes: R[j][j]."""
  row = [summary[f"{settings.split}/{s.name}/accuracy"] for s in settings.stages]
  if settings.method == "lora":
    row[:k] = [rows[j][j] for j in range(k)]
  return row


def prepare_replay(settings: ContinualConfig, config, workdir: str, k: int, stage_dir: str):
  """Stage k's buffer: the previous one after stage k-1's training examples (once: a resumed stage
  keeps the file it started with)."""
  if replay.load(stage_dir) is not None:
    return
  previous = stage_workdir(workdir, k - 1, settings)
  before = replay.load(previous) if k > 1 else replay.EMPTY
  with open(os.path.join(previous, tracking.SUMMARY_FILE)) as f:
    examples = json.load(f)[f"{settings.stages[k - 1].name}/data/train_rows"]
  buffer = replay.fill(before, k - 1, examples, settings.replay_size, config.train.seed)
  replay.save(buffer, stage_dir)
  log.info("continual: replay buffer of %d examples (%d seen)", len(buffer["items"]),
           buffer["seen"])


def estimate_fisher(stage_cfg, settings: ContinualConfig, workdir: str, k: int, stage_dir: str):
  from research import features  # pylint: disable=g-import-not-at-top
  from research.train.resolve import resolve  # pylint: disable=g-import-not-at-top
  r = resolve(stage_cfg, stage_dir, features.REGISTRY)
  task = r.task_set.tasks[k]
  params = ckpt_lib.workdir_params(stage_dir)
  start = time.time()
  new = penalty.fisher_diagonal(models.build(r.model_cfg), params, task.objectives,
                                task.train_features, settings.fisher_examples,
                                [stage_cfg.train.seed, k], stage_cfg.train.batch_size, r.mesh,
                                r.rules)
  previous = penalty.load_fisher(stage_workdir(workdir, k - 1, settings)) if k else None
  penalty.save_fisher(penalty.online(previous, new, settings.ewc_decay), stage_dir)
  log.info("continual: Fisher diagonal of stage %d over %d examples in %.1f s", k + 1,
           min(settings.fisher_examples, len(task.train_features)), time.time() - start)


def write_progress(workdir: str, R: np.ndarray, names: list, config, settings: ContinualConfig):
  """metrics.jsonl (a record per finished stage) and the plots, rewritten after every stage."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, tracking.METRICS_FILE), "w") as f:
    for k in range(len(R)):
      f.write(json.dumps({"step": (k + 1) * config.train.steps, **matrix.row_record(R, k)}) + "\n")
  title = f"{settings.method}, {settings.sequence} ({settings.split} accuracy)"
  matrix.plot(R, names, os.path.join(workdir, HEATMAP), os.path.join(workdir, CURVES), title)
