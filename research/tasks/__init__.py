"""Tasks: what a run trains on and how it is evaluated, as one `TaskSet` the loop drives.

`build(config, workdir)` reads the data and returns the task set: pretraining (`config.objective`
on `config.data`) is a set of one; fine-tuning configs list tasks under `config.tasks` (several =
multi-task, sampled by `research.tasks.mixture`); a stage of a continual-learning run
(`config.continual`) gets its stage's task set (research/continual/stages.py). Nothing is written
to the workdir here.
"""
from research.tasks import finetuning
from research.tasks.base import EvalContext, EvalSplit, Task
from research.tasks.pretraining import PretrainingTask
from research.tasks.taskset import LABELS_FILE, TaskSet, saved_labels


def build(config, workdir: str) -> TaskSet:
  if config.get("continual"):  # one stage of a continual-learning run
    from research.continual import stages  # pylint: disable=g-import-not-at-top
    return stages.build(config, workdir)
  if config.get("tasks"):
    return finetuning.build(config, workdir)
  task = PretrainingTask(config, workdir)
  return TaskSet([task], task.tokenizer)


__all__ = ["build", "EvalContext", "EvalSplit", "LABELS_FILE", "PretrainingTask", "Task",
           "TaskSet", "finetuning", "saved_labels"]
