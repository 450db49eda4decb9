"""`TaskSet`: everything task-specific the train loop drives, as one object.

The trainer builds the mesh, the state and the steps and runs the loop; for anything about data,
heads, losses, evaluation or label files it asks the task set, and only through these members:
  tokenizer, tasks               the shared tokenizer; the tasks (one = single-task)
  head_specs                     every head the model needs (the model config is derived from it)
  train_batch(step)              (task index, this host's rows): the multi-task mixture inside
  stats                          data statistics for the summary
  save(workdir)                  writes tokenizer.json and, for fine-tuning, labels.json
Pretraining is a task set of one `PretrainingTask`.
"""
import dataclasses
import json
import os

from research.data import tokenizer as tokenizer_lib
from research.tasks import mixture

LABELS_FILE = "labels.json"


@dataclasses.dataclass
class TaskSet:
  tasks: list
  tokenizer: object
  schedule: mixture.Schedule | None = None  # which task each step draws from (several tasks)

  @property
  def head_specs(self) -> tuple:
    specs = [spec for task in self.tasks for spec in task.heads]
    return tuple(dict.fromkeys(specs))  # tasks may share a head (class-incremental stages)

  def train_batch(self, step: int):
    task_index, task_step = self.schedule(step) if self.schedule else (0, step)
    return task_index, self.tasks[task_index].train.host_batch(task_step)

  @property
  def stats(self) -> dict:
    if len(self.tasks) == 1:
      return dict(self.tasks[0].stats)
    return {f"{t.name}/{k}": v for t in self.tasks for k, v in t.stats.items()}

  @property
  def labels(self) -> dict:
    return {t.name: t.labels for t in self.tasks if t.labels is not None}

  def save(self, workdir: str):
    tokenizer_lib.save(self.tokenizer, workdir)
    if self.labels:
      with open(os.path.join(workdir, LABELS_FILE), "w") as f:
        json.dump(self.labels, f, indent=2)


def saved_labels(workdir: str) -> dict:
  """labels.json of a fine-tuning workdir: {task: {'kind', 'head', 'names'}} ({} if none)."""
  path = os.path.join(workdir, LABELS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
