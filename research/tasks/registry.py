"""`build(config, workdir)`: the tasks a config asks for, and the tokenizer they share."""
from research.errors import UserError


def build(config, workdir: str):
  """Returns (tasks, tokenizer). Fine-tuning configs list tasks under `config.tasks`;
  otherwise the config pretrains (`config.objective` on `config.data`)."""
  if not config.get("tasks"):
    from research.tasks.pretraining import PretrainingTask  # pylint: disable=g-import-not-at-top
    task = PretrainingTask(config, workdir)
    return [task], task.tokenizer
  from research.tasks import finetuning  # pylint: disable=g-import-not-at-top
  return finetuning.build(config, workdir)


def check_heads(tasks, model_cfg):
  """Every task's head must be one of the model's."""
  names = {s.name for s in model_cfg.head_specs}
  for task in tasks:
    needed = getattr(task, "head", None)
    if needed and needed not in names:
      raise UserError(f"task {task.name!r} needs a model head named {needed!r}; the model has "
                      f"{sorted(names)}")
