"""Fine-tuning tasks from `config.tasks`: one entry per task (several = multi-task learning).

Each entry: kind ('classification', 'multilabel', 'regression', 'token_classification', 'qa',
'generation'), source (see `research.data.labelled`) and the source's options. 'generation'
fine-tunes a decoder (its tied 'lm' head, a GPT-2 byte-level BPE tokenizer) and trains alone; the
other kinds fine-tune an encoder. A single task uses the head named
after its kind ('classification', 'token_classification', 'span'), so a single-task classifier
exports to transformers' *ForSequenceClassification; in multi-task runs each task's head is named
after the task. Label names are saved as WORKDIR/labels.json for `research.predict`.
"""
from research.data import cache as data_cache
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError
from research.data import labelled
from research.tasks import mixture
from research.tasks.classification import KINDS as CLASSIFICATION_KINDS, ClassificationTask
from research.tasks.generation import GenerationTask
from research.tasks.question_answering import QuestionAnsweringTask
from research.tasks.taskset import TaskSet, saved_labels
from research.tasks.token_classification import TokenClassificationTask

HEAD_KIND = {"classification": "classification", "multilabel": "classification",
             "regression": "classification", "token_classification": "token_classification",
             "qa": "span", "generation": "lm"}


def task_class(kind: str):
  if kind in CLASSIFICATION_KINDS:
    return ClassificationTask
  if kind == "token_classification":
    return TokenClassificationTask
  if kind == "qa":
    return QuestionAnsweringTask
  if kind == "generation":
    return GenerationTask
  raise UserError(f"unknown task kind {kind!r}; known: {sorted(HEAD_KIND)}")


def head_name(name: str, kind: str, multi: bool) -> str:
  return name if multi else HEAD_KIND[kind]


def training_texts(rows: dict):
  for r in rows["train"]:
    for key in ("text", "text_pair", "question", "context", "prompt", "completion"):
      if r.get(key):
        yield r[key]
    if "words" in r:
      yield " ".join(r["words"])


def model_kind(config) -> str:
  """'decoder' for a generation task (which trains alone), else 'encoder'."""
  kinds = [config.tasks[name].kind for name in config.tasks]
  if "generation" in kinds and len(kinds) > 1:
    raise UserError(f"a generation task trains alone, got tasks {list(config.tasks)}")
  return "decoder" if kinds == ["generation"] else "encoder"


def heads_of_config(config) -> tuple:
  """The heads `build`'s tasks give the model, from the config alone (no data read): each task's
  head by its kind and name, with the config's `model.num_labels` outputs where the tasks take
  the label count from the data."""
  names = list(config.tasks.keys())
  return tuple(f"{head_name(n, config.tasks[n].kind, len(names) > 1)}="
               f"{HEAD_KIND[config.tasks[n].kind]}" for n in names)


def build(config, workdir: str) -> TaskSet:
  names = list(config.tasks.keys())
  for name in names:
    task_class(config.tasks[name].kind)  # an unknown kind fails before any data is read
  rows = {name: labelled.load_rows(config.tasks[name]) for name in names}
  texts = [t for name in names for t in training_texts(rows[name])]
  tokenizer = tokenizer_lib.get_tokenizer(config.data, model_kind(config), [texts], workdir,
                                          data_cache.of_config(config))
  labels = saved_labels(workdir)  # a resumed run keeps its label order
  tasks = []
  for name in names:
    cfg = config.tasks[name]
    tasks.append(task_class(cfg.kind)(name, cfg, rows[name], tokenizer, config,
                                      head_name(name, cfg.kind, len(names) > 1),
                                      labels.get(name, {}).get("names")))
  schedule = None
  if len(tasks) > 1:
    schedule = mixture.Schedule([t.train_size for t in tasks], config.mixture.kind,
                                config.mixture.temperature, config.train.seed)
  return TaskSet(tasks, tokenizer, schedule)


__all__ = ["build", "heads_of_config", "model_kind", "task_class"]
