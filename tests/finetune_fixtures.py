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
  """GLUE task `task`'s files with its hub columns (`labelled.GLUE`) and split names (MNLI:
  validation_matched, validation_mismatched). The label says whether the second text repeats
  the first (MNLI: repeats = entailment, else neutral or contradiction); a one-sentence task
  (CoLA, SST-2) keeps the first text when the label is 1 and the second otherwise."""
  from research.data.labelled import GLUE  # pylint: disable=g-import-not-at-top
  text, pair, _ = GLUE[task]
  d = tmp_path / task
  d.mkdir()
  rng = random.Random(task)
  splits = ("validation_matched", "validation_mismatched") if task == "mnli" else ("validation",)
  for split, n in (("train", 48),) + tuple((s, 16) for s in splits):
    rows = []
    for _ in range(n):
      a = " ".join(rng.choice(PEOPLE + PLACES) for _ in range(4))
      same = rng.random() < 0.5
      b = a if same else " ".join(rng.choice(ORGS) for _ in range(4))
      label = (5.0 * same) if task == "stsb" else int(same)
      if task == "mnli":
        label = 0 if same else rng.choice((1, 2))
      row = {text: a, pair: b} if pair else {text: a if same else b}
      rows.append(dict(row, label=label, idx=len(rows)))
    write_jsonl(d / f"{split}.jsonl", rows)
  return d


HF_WIDTH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def hf_checkpoint(directory, architecture, texts, vocab_size=400, max_len=64):
  """A randomly initialised tiny transformers masked-LM checkpoint (`architecture` 'bert' or
  'roberta') with a tokenizer trained on `texts` (BERT: WordPiece vocab.txt; RoBERTa: byte-level
  BPE vocab.json + merges.txt), saved in `directory`: what tests start `hf:` runs from instead of
  a hub checkpoint."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  directory.mkdir(parents=True)
  torch.manual_seed(0)
  if architecture == "bert":
    pieces = tokenizer_lib.train_wordpiece(texts, vocab_size).get_vocab()
    vocab = sorted(pieces, key=pieces.get)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = transformers.BertConfig(vocab_size=len(vocab), max_position_embeddings=max_len,
                                     **HF_WIDTH)
    model = transformers.BertForMaskedLM(config)
  elif architecture == "roberta":
    import tokenizers  # pylint: disable=g-import-not-at-top
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    bpe.model.save(str(directory))
    config = transformers.RobertaConfig(vocab_size=bpe.get_vocab_size(), pad_token_id=1,
                                        max_position_embeddings=max_len + 2, type_vocab_size=1,
                                        **HF_WIDTH)
    model = transformers.RobertaForMaskedLM(config)
  else:
    raise ValueError(f"architecture must be 'bert' or 'roberta', got {architecture!r}")
  model.eval().save_pretrained(directory)
  return directory
