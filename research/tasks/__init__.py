"""Tasks: what a run trains on and how it is evaluated, behind one interface the loop drives.

A task owns its data (infinite, step-indexed training batches; fixed evaluation splits), its loss
(`loss(outputs, batch) -> (loss, {name: (sum, count)})`, pure and jitted by the trainer), what
evaluation keeps of the model's outputs (`eval_outputs(outputs, batch)`, also jitted) and how
those outputs become metrics on the host (`evaluate(split, run, report_dir)`). Pretraining (MLM,
CLM) is one task; fine-tuning configs list one or more under `config.tasks` (several = multi-task,
sampled by `research.tasks.mixture`).
"""
from research.tasks import finetuning, registry
from research.tasks.base import Task
from research.tasks.registry import build

__all__ = ["Task", "build", "finetuning", "registry"]
