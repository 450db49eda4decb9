"""The teacher's logits computed once, to disk (`distill.precompute`), instead of in every step.

A run's training batches are a pure function of its data config, seed, batch size and step
(research/data/pipeline.py), so the teacher's outputs on them are too: with `distill.precompute`
the run computes the teacher's logits (every '<head>_logits' it has) on the batches of steps
[0, train.steps) once, before training, and stores them as one array per logit under
`distill.precompute_dir` (default WORKDIR/teacher_logits) in a folder named by a fingerprint of
everything they depend on (the teacher's parameters, bytes included, and model; the config
sections that make the batches: data, tasks, mixture, objective, train). Another student of the
same teacher on the same data (another depth, width, loss weights), or a resumed run, finds that
folder and computes nothing; a changed input gives another fingerprint, never stale logits. The train step is then the plain one with the
distillation objectives reading the stored logits from the batch: the teacher is neither on the
device nor run while training.

Only logits are stored (soft targets): hidden-state and attention matching need the teacher in
the step, and `check` refuses them with precompute, in one line, as it does a multi-process run
(each process would need its own rows' logits) and logits over `MAX_BYTES`.
"""
import dataclasses
import hashlib
import json
import os

import flax.linen as nn
import jax
import numpy as np

from research import checkpoint as ckpt_lib
from research import data as data_lib
from research import params as params_lib
from research import compile_options, sharding
from research.errors import UserError
from research.objectives import distillation

MAX_BYTES = 8 * 2**30  # refuse to store more than this
DEFAULT_DIR = "teacher_logits"
DONE = "fingerprint.json"  # written last: a folder without it is recomputed


def check(settings, num_processes: int = 1):
  """Refuses (one line) what stored logits cannot serve; `settings` a DistillConfig."""
  if not settings.precompute:
    return
  if settings.hidden_weight or settings.attention_weight:
    raise UserError("distill.precompute stores the teacher's logits only: hidden-state and "
                    "attention matching need the teacher in the step (set distill.precompute="
                    "False, or distill.hidden_weight=0 and distill.attention_weight=0)")
  if num_processes > 1:
    raise UserError(f"distill.precompute runs in a single process ({num_processes} here): "
                    "set distill.precompute=False to run the teacher in the step")


# The config sections the training batches are a function of (with the step): the data and
# tasks, the multi-task mixture, MLM masking (objective), and train (batch size, steps, seed).
BATCH_SECTIONS = ("data", "tasks", "mixture", "objective", "train")


def fingerprint(config, teacher) -> str:
  """A digest of everything the stored logits depend on: the teacher's parameters (their bytes,
  `checkpoint.checksum`) and model, and the config sections that make the batches."""
  inputs = {"params": ckpt_lib.checksum(params_lib.flatten(teacher.params)),
            "model": dataclasses.asdict(teacher.model_cfg),
            **{name: config[name].to_dict() for name in BATCH_SECTIONS if name in config}}
  return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TeacherLogits:
  """The stored logits of one run's training batches: `attach(step, batch)` adds step's to a
  host batch under `distillation.TEACHER`, as the in-step teacher would have."""

  def __init__(self, folder: str):
    with open(os.path.join(folder, DONE)) as f:
      self.keys = json.load(f)["keys"]
    self.arrays = {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r")
                   for k in self.keys}
    self.folder = folder

  def attach(self, step: int, batch: dict) -> dict:
    return {**batch, distillation.TEACHER: {k: np.asarray(a[step])
                                            for k, a in self.arrays.items()}}

  def batches(self, train_batch):
    """`train_batch` (step -> (task index, host batch)) with each step's logits attached."""
    def with_logits(step):
      task_index, batch = train_batch(step)
      return task_index, self.attach(step, batch)
    return with_logits

  @classmethod
  def of_run(cls, r, teacher, settings, workdir: str) -> "TeacherLogits":
    """The run's stored logits, computed first if no folder has them; `settings` the run's
    DistillConfig."""
    folder = os.path.join(settings.precompute_dir or os.path.join(workdir, DEFAULT_DIR),
                          fingerprint(r.config, teacher))
    if not os.path.exists(os.path.join(folder, DONE)):
      compute(r, teacher, folder)
    return cls(folder)


def compute(r, teacher, folder: str):
  """Runs the teacher (jitted, on the run's mesh) over the batches of steps [0, train.steps) and
  writes one (steps, ...) array per logit, then the fingerprint file."""
  import tqdm  # pylint: disable=g-import-not-at-top
  total = r.config.train.steps
  batch_sharding = sharding.batch_sharding(r.mesh)
  params = jax.device_put(teacher.params, teacher.shardings(r.mesh, r.rules))
  outputs = jax.jit(teacher.outputs, compiler_options=compile_options.for_step(
      compile_options.FORWARD, r.mesh.devices.flat[0].platform))
  os.makedirs(folder, exist_ok=True)
  arrays = None
  bar = tqdm.tqdm(total=total, unit="step", desc="teacher logits",
                  disable=not r.config.logging.progress)
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(r.rules):
    for step, (_, batch) in data_lib.device_batches(r.task_set.train_batch, 0, total,
                                                    batch_sharding):
      out = {k: np.asarray(v) for k, v in outputs(params, batch).items()}
      if arrays is None:
        size = sum(v.nbytes for v in out.values()) * total
        if size > MAX_BYTES:
          raise UserError(f"distill.precompute would store {size / 2**30:.1f} GiB of teacher "
                          f"logits (over {MAX_BYTES / 2**30:.0f} GiB): set "
                          "distill.precompute=False")
        arrays = {k: np.lib.format.open_memmap(os.path.join(folder, f"{k}.npy"), mode="w+",
                                               dtype=v.dtype, shape=(total, *v.shape))
                  for k, v in out.items()}
      for k, v in out.items():
        if v.shape != arrays[k].shape[1:]:
          raise UserError(f"distill.precompute: the teacher's {k} has shape {v.shape} at step "
                          f"{step}, {arrays[k].shape[1:]} before (tasks of other shapes): set "
                          "distill.precompute=False")
        arrays[k][step] = v
      bar.update(1)
  bar.close()
  for a in arrays.values():
    a.flush()
  with open(os.path.join(folder, DONE), "w") as f:
    json.dump({"keys": sorted(arrays), "steps": total, "teacher": teacher.source}, f, indent=2)
