"""Tasks: what a run trains on and how it is evaluated, as one `TaskSet` the loop drives.

`build(config, workdir)` reads the data and returns the task set: pretraining (`config.objective`
on `config.data`) is a set of one; fine-tuning configs list tasks under `config.tasks` (several =
multi-task, sampled by `research.tasks.mixture`). Nothing is written to the workdir here.
"""
from research.tasks import finetuning
from research.tasks.base import EvalContext, EvalSplit, Task
from research.tasks.pretraining import PretrainingTask
from research.tasks.taskset import LABELS_FILE, TaskSet, saved_labels


def build(config, workdir: str) -> TaskSet:
  if config.get("tasks"):
    return finetuning.build(config, workdir)
  task = PretrainingTask(config, workdir)
  return TaskSet([task], task.tokenizer)


__all__ = ["build", "EvalContext", "EvalSplit", "LABELS_FILE", "PretrainingTask", "Task",
           "TaskSet", "finetuning", "saved_labels"]
