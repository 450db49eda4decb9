"""Raw rows of the fine-tuning tasks, per split, in one shape per task kind.

  classification / regression / multilabel:  {'text', 'text_pair' (or None), 'label'}
  token_classification:                      {'words': [...], 'tags': ['B-PER', 'O', ...]}
  qa:                                        {'id', 'question', 'context',
                                              'answers': {'text': [...], 'answer_start': [...]}}
  generation:                                {'prompt', 'completion'}

Sources (`task_cfg.source`):
  bbc_news       the embedded BBC News articles; fixed stratified 80/10/10 train/eval/test split
  bbc_headlines  generation from the same articles: prompt = the headline and the blank line
                 after it (the article's own layout), completion = the first sentence. Held out
                 for eval/test (alternately): the articles configs/clm.py holds out at its default
                 data.eval_fraction (0.05), so a decoder pretrained there saw none of them; a
                 training article with the same headline or first sentence as a held-out one is
                 dropped
  glue/<task>    cola sst2 mrpc qqp stsb mnli qnli rte wnli, through HF `datasets` (hub
                 'nyu-mll/glue'; eval = validation, mnli: validation_matched, and test =
                 validation_mismatched)
  conll2003      CoNLL-2003 NER (hub 'eriktks/conll2003'); eval = validation, test = test
  squad, squad_v2  SQuAD v1.1 / v2.0 (hub 'rajpurkar/squad', 'rajpurkar/squad_v2'); eval = validation
  local          the user's files: task_cfg.train / .eval / .test, JSONL or CSV
Hub-backed sources read `task_cfg.data_dir` instead of the hub when it is set: a directory of
`<split>.jsonl` files with the hub dataset's columns (what the tests write).
"""
import json
import os
import re

from research.data import sources
from research.data import stratified
from research.errors import UserError

GLUE = {  # task: (text column, pair column or None, kind)
    "cola": ("sentence", None, "classification"), "sst2": ("sentence", None, "classification"),
    "mrpc": ("sentence1", "sentence2", "classification"),
    "qqp": ("question1", "question2", "classification"),
    "stsb": ("sentence1", "sentence2", "regression"),
    "mnli": ("premise", "hypothesis", "classification"),
    "qnli": ("question", "sentence", "classification"),
    "rte": ("sentence1", "sentence2", "classification"),
    "wnli": ("sentence1", "sentence2", "classification"),
}
HUB = {"conll2003": ("eriktks/conll2003", None), "squad": ("rajpurkar/squad", None),
       "squad_v2": ("rajpurkar/squad_v2", None)}
SPLITS = {"eval": "validation", "test": "test"}
# Rows in each hub task's train split as the hub serves it (SQuAD: questions, before long
# contexts are split into windows). Recipes that give epochs count steps from it
# (`config_lib.epoch_steps`).
TRAIN_ROWS = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "stsb": 5749,
              "mnli": 392702, "qnli": 104743, "rte": 2490, "wnli": 635, "conll2003": 14041,
              "squad": 87599, "squad_v2": 130319}


def load_rows(task_cfg) -> dict:
  """{'train': rows, 'eval': rows[, 'test': rows]} for one task config."""
  source = task_cfg.source
  if source == "bbc_news":
    return _bbc_news(task_cfg.get("seed", 0))
  if source == "bbc_headlines":
    return _bbc_headlines()
  if source == "local":
    return _local(task_cfg)
  if source.startswith("glue/"):
    name = source[5:]
    if name not in GLUE:
      raise UserError(f"unknown GLUE task {name!r}; known: {sorted(GLUE)}")
    text, pair, _ = GLUE[name]
    splits = {"train": "train", "eval": "validation", "test": None}
    if name == "mnli":
      splits.update(eval="validation_matched", test="validation_mismatched")
    raw = _hub(task_cfg, "nyu-mll/glue", name, splits)
    return {s: [{"text": r[text], "text_pair": r[pair] if pair else None, "label": r["label"]}
                for r in rows] for s, rows in raw.items()}
  if source in HUB:
    hub, config_name = HUB[source]
    raw = _hub(task_cfg, hub, config_name, {"train": "train", "eval": "validation",
                                             "test": "test" if source == "conll2003" else None})
    if source == "conll2003":
      names = raw.pop("_tag_names", None)
      return {s: [{"words": list(r["tokens"]),
                   "tags": [names[t] if names and isinstance(t, int) else str(t) for t in r["ner_tags"]]}
                  for r in rows] for s, rows in raw.items()}
    return {s: [{"id": str(r["id"]), "question": r["question"], "context": r["context"],
                 "answers": {"text": list(r["answers"]["text"]),
                             "answer_start": list(r["answers"]["answer_start"])}}
                for r in rows] for s, rows in raw.items() if s != "_tag_names"}
  raise UserError(f"unknown task source {source!r}; known: bbc_news, glue/<task>, "
                  f"{', '.join(HUB)}, local")


def _bbc_news(seed: int) -> dict:
  """80% train, then the rest halved into eval and test, each stratified by topic."""
  articles = sources.read_bbc_news()
  rows = [{"text": text, "text_pair": None, "label": topic} for topic, text in articles]
  train, rest = stratified.split([r["label"] for r in rows], 0.2, seed)
  rest = [rows[i] for i in rest]
  eval_, test = stratified.split([r["label"] for r in rest], 0.5, seed)
  return {"train": [rows[i] for i in train], "eval": [rest[i] for i in eval_],
          "test": [rest[i] for i in test]}


HEADLINES_HELD_OUT = 0.05  # = configs/clm.py's data.eval_fraction: the same articles
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?][\"')]*)(?=\s|$)", re.DOTALL)


def _bbc_headlines() -> dict:
  splits = {"train": [], "eval": [], "test": []}
  held_out = 0
  for split, text in sources.holdout((text for _, text in sources.read_bbc_news()),
                                     HEADLINES_HELD_OUT):
    headline, _, body = text.partition("\n")
    paragraph = body.strip().split("\n")[0].strip()
    sentence = _FIRST_SENTENCE.match(paragraph)
    if not headline.strip() or not sentence:
      continue
    row = {"prompt": headline.strip() + "\n\n", "completion": sentence.group(1)}
    if split == "eval":
      split = ("eval", "test")[held_out % 2]
      held_out += 1
    splits[split].append(row)
  seen = {r[k] for s in ("eval", "test") for r in splits[s] for k in ("prompt", "completion")}
  splits["train"] = [r for r in splits["train"]
                     if r["prompt"] not in seen and r["completion"] not in seen]
  return splits


def _hub(task_cfg, hub_name, config_name, splits) -> dict:
  import datasets  # pylint: disable=g-import-not-at-top
  data_dir = task_cfg.get("data_dir", "")
  wanted = {ours: theirs for ours, theirs in splits.items() if theirs}
  try:
    if data_dir:
      files = {}
      for ours, theirs in wanted.items():
        path = os.path.join(data_dir, f"{theirs}.jsonl")
        if os.path.exists(path):
          files[theirs] = path
          sources.read_jsonl(path)  # a malformed line fails here, naming the file and line
        elif ours != "test":
          raise UserError(f"task data_dir {data_dir!r} lacks {theirs}.jsonl")
      dsd = datasets.load_dataset("json", data_files=files)
    else:
      dsd = datasets.load_dataset(hub_name, config_name)
  except UserError:
    raise
  except Exception as e:  # offline hub, unknown name, malformed files
    raise UserError(f"could not load {hub_name}{'/' + config_name if config_name else ''} "
                    f"{'from ' + data_dir if data_dir else 'from the Hugging Face hub'}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  out = {ours: list(dsd[theirs]) for ours, theirs in wanted.items() if theirs in dsd}
  feature = dsd["train"].features.get("ner_tags") if "ner_tags" in dsd["train"].features else None
  if feature is not None and hasattr(getattr(feature, "feature", None), "names"):
    out["_tag_names"] = feature.feature.names
  return out


def _local(task_cfg) -> dict:
  out = {}
  for split in ("train", "eval", "test"):
    path = task_cfg.get(split, "")
    if not path:
      if split != "test":
        raise UserError(f"task=local needs {split}=PATH")
      continue
    rows = read_table(path)
    if not rows:
      raise UserError(f"{split} file {path!r} is empty")
    out[split] = [_local_row(r, task_cfg, path, n) for n, r in enumerate(rows, 1)]
  return out


def read_table(path: str) -> list[dict]:
  """Rows of a JSONL (one object a line) or CSV (header row) file."""
  if not os.path.exists(path):
    raise UserError(f"no such file {path!r}")
  if path.endswith((".jsonl", ".json")):
    return sources.read_jsonl(path)
  if path.endswith(".csv"):
    import csv  # pylint: disable=g-import-not-at-top
    with open(path, encoding="utf-8", newline="") as f:
      return list(csv.DictReader(f))
  raise UserError(f"{path!r}: expected a .jsonl or .csv file")


def _local_row(row, task_cfg, path, number):
  """Row `number` (1-based) of a local file. Its text must be text: a number or a list would be
  str()-ed into a different input than the file holds (labels are checked by the task)."""
  if task_cfg.get("kind") == "generation":
    return _generation_row(row, task_cfg, path)
  text_field, label_field = task_cfg.get("text_field", "text"), task_cfg.get("label_field", "label")
  pair_field = task_cfg.get("text_pair_field", "text_pair")
  for field in (text_field, label_field):
    if field not in row:
      raise UserError(f"{path!r} has no {field!r} column; columns: {sorted(row)}")
  pair = row.get(pair_field) or None
  for field in (text_field, pair_field) if pair is not None else (text_field,):
    if not isinstance(row[field], str):
      raise UserError(f"{path!r}, row {number}: {field!r} must be text, got "
                      f"{json.dumps(row[field])[:60]}")
  return {"text": row[text_field], "text_pair": pair, "label": row[label_field]}


def _generation_row(row, task_cfg, path):
  out = {}
  for key in ("prompt", "completion"):
    field = task_cfg.get(f"{key}_field", key)
    if not isinstance(row.get(field), str) or not row[field]:
      problem = "no" if field not in row else "an empty or non-text"
      raise UserError(f"{path!r}: a row has {problem} {field!r} field (a generation task needs "
                      f"non-empty text in {task_cfg.get('prompt_field', 'prompt')!r} and "
                      f"{task_cfg.get('completion_field', 'completion')!r}); row fields: "
                      f"{sorted(row)}")
    out[key] = row[field]
  return out
