"""Small, hand-written task files in the hub datasets' formats (what the tests feed `data_dir`)."""
import json
import random

PEOPLE = ["Angela Merkel", "Barack Obama", "Marie Curie", "Lionel Messi", "Ada Lovelace"]
PLACES = ["Berlin", "Paris", "London", "Madrid", "Tokyo"]
ORGS = ["Siemens", "the BBC", "Google", "UNESCO"]


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tagged(text, kind):
  """Words of `text` with IOB2 tags of one entity of `kind` (a leading 'the' is outside it)."""
  words = text.split()
  if kind is None:
    return words, ["O"] * len(words)
  lead = 1 if words[0] == "the" else 0
  return words, ["O"] * lead + [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - lead - 1)


def ner_rows(n, seed):
  rng, rows = random.Random(seed), []
  for _ in range(n):
    parts = [tagged(rng.choice(PEOPLE), "PER"), tagged("visited", None),
             tagged(rng.choice(PLACES), "LOC"), tagged("with", None),
             tagged(rng.choice(ORGS), "ORG"), tagged(".", None)]
    rows.append({"tokens": [w for ws, _ in parts for w in ws],
                 "ner_tags": [t for _, ts in parts for t in ts]})
  return rows


def conll_dir(tmp_path):
  d = tmp_path / "conll"
  d.mkdir()
  for split, n, seed in (("train", 60, 0), ("validation", 12, 1), ("test", 12, 2)):
    write_jsonl(d / f"{split}.jsonl", ner_rows(n, seed))
  return d


def squad_rows(n, seed, unanswerable=0):
  rng, rows = random.Random(seed), []
  for i in range(n):
    person, place = rng.choice(PEOPLE), rng.choice(PLACES)
    filler = " ".join(rng.choice(["The", "weather", "was", "mild", "and", "people", "walked"])
                      for _ in range(rng.randint(20, 60)))
    context = f"{filler}. In the spring, {person} travelled to {place} for a conference. {filler}."
    if i < unanswerable:
      rows.append({"id": f"{seed}-{i}", "title": "t", "context": context,
                   "question": "Which river flows through the city?",
                   "answers": {"text": [], "answer_start": []}})
    else:
      rows.append({"id": f"{seed}-{i}", "title": "t", "context": context,
                   "question": f"Where did {person} travel to?",
                   "answers": {"text": [place], "answer_start": [context.index(f"to {place}") + 3]}})
  return rows


def squad_dir(tmp_path, unanswerable=0):
  d = tmp_path / "squad"
  d.mkdir()
  write_jsonl(d / "train.jsonl", squad_rows(40, 0, unanswerable))
  write_jsonl(d / "validation.jsonl", squad_rows(10, 1, unanswerable and 3))
  return d


def glue_dir(tmp_path, task):
  d = tmp_path / task
  d.mkdir()
  rng = random.Random(task)
  for split, n in (("train", 48), ("validation", 16)):
    rows = []
    for _ in range(n):
      a = " ".join(rng.choice(PEOPLE + PLACES) for _ in range(4))
      same = rng.random() < 0.5
      b = a if same else " ".join(rng.choice(ORGS) for _ in range(4))
      label = (5.0 * same) if task == "stsb" else int(same)
      rows.append({"sentence1": a, "sentence2": b, "label": label, "idx": len(rows)})
    write_jsonl(d / f"{split}.jsonl", rows)
  return d
