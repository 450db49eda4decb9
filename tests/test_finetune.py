"""Fine-tuning end to end on the embedded corpus and on fixture files: every task kind, reports,
best checkpoint, early stopping, multi-task, predictions, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import finetune as finetune_config
from conftest import REPO
from finetune_fixtures import conll_dir, glue_dir, squad_dir, write_jsonl
from research import tracking, train
from research.errors import UserError
from research.tasks import mixture


def config_for(arg, steps=20, every=10, **overrides):
  config = finetune_config.get_config(arg + ",runlocal")
  config.train.update(steps=steps, batch_size=16)
  config.data.update(seq_len=64, vocab_size=2048)
  config.evals.every_steps = every
  config.ckpt.every_steps = every
  config.logging.update(every_steps=5, progress=False, tensorboard=False)
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def predict(workdir, rows, *extra):
  proc = subprocess.run([sys.executable, "-m", "research.predict", f"--workdir={workdir}",
                         "--progress=false", *extra], cwd=REPO, capture_output=True, text=True,
                        input="".join(json.dumps(r) + "\n" for r in rows), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]


def test_bbc_news_reports_best_checkpoint_and_predictions(tmp_path):
  workdir = str(tmp_path)
  summary = train.run(config_for("task=bbc_news", steps=30), workdir)
  for split in ("eval", "test"):
    assert 0.0 <= summary[f"{split}/bbc_news/accuracy"] <= 1.0
    for key in ("f1_macro", "f1_weighted", "precision_micro", "recall_macro", "mcc"):
      assert f"{split}/bbc_news/{key}" in summary
    with open(os.path.join(workdir, "reports", f"{split}_bbc_news_report.json")) as f:
      report = json.load(f)
    assert sum(r["support"] for r in report.values()) == summary[f"data/{split}_rows"]
    assert os.path.getsize(os.path.join(workdir, "reports", f"{split}_bbc_news_confusion.png")) > 0
  assert summary["best/step"] in (10, 20, 30)
  records = {r["step"]: r for r in tracking.read_metrics(workdir) if "eval/bbc_news/accuracy" in r}
  assert summary["best/eval/bbc_news/accuracy"] == max(r["eval/bbc_news/accuracy"] for r in records.values())
  with open(os.path.join(workdir, "labels.json")) as f:
    names = json.load(f)["bbc_news"]["names"]
  assert names == ["business", "entertainment", "politics", "sports", "tech"]
  out = predict(workdir, [{"text": "Shares fell as the bank cut its profit forecast"},
                          {"text": "The striker scored twice in the cup final"}])
  assert len(out) == 2 and all(o["label"] in names for o in out)
  assert all(abs(sum(o["scores"].values()) - 1) < 1e-4 for o in out)


def test_local_files_with_string_labels(tmp_path):
  rows = [{"text": f"{w} movie number {i}", "label": "pos" if w in ("great", "lovely") else "neg"}
          for i, w in enumerate(["great", "awful", "lovely", "boring"] * 10)]
  write_jsonl(tmp_path / "train.jsonl", rows)
  (tmp_path / "eval.csv").write_text("text,label\n" + "\n".join(
      f"{r['text']},{r['label']}" for r in rows[:12]) + "\n")
  config = config_for(f"task=local,train={tmp_path / 'train.jsonl'},eval={tmp_path / 'eval.csv'}")
  summary = train.run(config, str(tmp_path / "run"))
  assert summary["data/train_rows"] == 40 and summary["data/eval_rows"] == 12
  assert "eval/local/accuracy" in summary and "eval/local/roc_auc" in summary
  with open(tmp_path / "run" / "labels.json") as f:
    assert json.load(f)["local"]["names"] == ["neg", "pos"]

  long_text = " ".join(["word"] * 500)
  write_jsonl(tmp_path / "long.jsonl", rows + [{"text": long_text, "label": "neg"}])
  config = config_for(f"task=local,train={tmp_path / 'long.jsonl'},eval={tmp_path / 'eval.csv'}",
                      steps=1, every=1)
  assert train.run(config, str(tmp_path / "long_run"))["data/train_truncated"] == 1

  bad = {"unseen": [{"text": "x", "label": "meh"}], "column": [{"body": "x", "label": "pos"}]}
  for name, rows_ in bad.items():
    write_jsonl(tmp_path / f"{name}.jsonl", rows_)
  (tmp_path / "empty.jsonl").write_text("")
  for eval_file, message in (("unseen.jsonl", r"label\(s\) \['meh'\] never occur in training"),
                             ("column.jsonl", "has no 'text' column"),
                             ("empty.jsonl", "is empty")):
    config = config_for(f"task=local,train={tmp_path / 'train.jsonl'},eval={tmp_path / eval_file}")
    with pytest.raises(UserError, match=message):
      train.run(config, str(tmp_path / f"bad_{eval_file}"))


def test_multilabel_and_regression_local(tmp_path):
  rows = [{"text": f"{a} and {b}", "label": [a, b]} for a in ("red", "green", "blue")
          for b in ("cat", "dog")] * 4
  write_jsonl(tmp_path / "ml.jsonl", rows)
  summary = train.run(config_for(f"task=local,kind=multilabel,train={tmp_path / 'ml.jsonl'},"
                                 f"eval={tmp_path / 'ml.jsonl'}", steps=4, every=4),
                      str(tmp_path / "ml"))
  assert {"eval/local/f1_micro", "eval/local/exact_match"} <= set(summary)
  reg = [{"text": f"{n} stars", "label": float(n)} for n in range(1, 6)] * 8
  write_jsonl(tmp_path / "reg.jsonl", reg)
  summary = train.run(config_for(f"task=local,kind=regression,train={tmp_path / 'reg.jsonl'},"
                                 f"eval={tmp_path / 'reg.jsonl'}", steps=4, every=4),
                      str(tmp_path / "reg"))
  assert {"eval/local/pearson", "eval/local/spearman", "eval/local/mse"} <= set(summary)


def test_ner_end_to_end_and_entity_spans(tmp_path):
  data = conll_dir(tmp_path)
  workdir = str(tmp_path / "run")
  summary = train.run(config_for(f"task=conll2003,data_dir={data}", steps=60, every=30,
                                 **{"optim.learning_rate": 3e-3}), workdir)
  for key in ("f1", "precision", "recall", "accuracy", "PER/f1", "LOC/f1", "ORG/f1", "strict/f1"):
    assert f"eval/conll2003/{key}" in summary and f"test/conll2003/{key}" in summary
  assert summary["test/conll2003/f1"] > 0.5  # a learnable pattern, learnt
  text = "Marie Curie visited Tokyo with Google ."
  out = predict(workdir, [{"text": text}])[0]
  for entity in out["entities"]:
    assert text[entity["start"]:entity["end"]] == entity["text"]
  assert len(out["tags"]) == len(text.split())


def test_qa_end_to_end_maps_answers_to_the_text(tmp_path):
  data = squad_dir(tmp_path)
  rows = [json.loads(l) for l in (data / "train.jsonl").read_text().splitlines()]
  rows[0]["answers"]["answer_start"] = [0]  # the answer text is not at that offset
  write_jsonl(data / "train.jsonl", rows)
  workdir = str(tmp_path / "run")
  config = config_for(f"task=squad,data_dir={data}", steps=40, every=20,
                      **{"optim.learning_rate": 3e-3})
  config.data.seq_len = 64
  config.tasks.squad.update(doc_stride=16, max_question_len=16)
  summary = train.run(config, workdir)
  assert summary["data/train_answers_not_in_context"] == 1
  assert summary["data/train_windows"] > summary["data/train_rows"]  # long contexts split
  assert 0 <= summary["eval/squad/exact_match"] <= 100 and "eval/squad/f1" in summary
  context = "In the spring, Ada Lovelace travelled to Madrid for a conference."
  out = predict(workdir, [{"id": "q1", "question": "Where did Ada Lovelace travel to?",
                           "context": context}])[0]
  assert out["id"] == "q1" and context[out["start"]:out["end"]] == out["answer"]


def test_multitask_glue_two_heads_one_encoder(tmp_path):
  mrpc, stsb = glue_dir(tmp_path, "mrpc"), glue_dir(tmp_path, "stsb")
  config = config_for("task=mrpc+stsb", steps=12, every=12)
  config.tasks.mrpc.data_dir, config.tasks.stsb.data_dir = str(mrpc), str(stsb)
  summary = train.run(config, str(tmp_path / "run"))
  assert {"eval/mrpc/accuracy", "eval/mrpc/f1", "eval/mrpc/score", "eval/stsb/pearson",
          "eval/stsb/spearman", "eval/stsb/score"} <= set(summary)
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["model"]["heads"] == ["mrpc=classification:2", "stsb=classification:1"]
  record = tracking.read_metrics(str(tmp_path / "run"))[-1]
  assert "train/mrpc/loss" in record or "train/stsb/loss" in record


def test_mixture_schedule_is_deterministic_and_proportional():
  a = mixture.Schedule([300, 100], "proportional", seed=3)
  b = mixture.Schedule([300, 100], "proportional", seed=3)
  steps = [a(s) for s in range(10_000)]
  assert steps == [b(s) for s in range(10_000)]
  assert b(9_999) == steps[9_999] and mixture.Schedule([300, 100], seed=3)(6_000) == steps[6_000]
  tasks = np.array([t for t, _ in steps])
  assert abs((tasks == 0).mean() - 0.75) < 0.02
  for t in (0, 1):  # each task's own counter runs 0, 1, 2, ... over the steps that pick it
    assert [c for task, c in steps if task == t] == list(range((tasks == t).sum()))
  flat = mixture.weights([300, 100], "temperature", 1e9)
  np.testing.assert_allclose(flat, [0.5, 0.5], atol=1e-6)


def test_early_stopping_and_resume_after_stop(tmp_path):
  config = config_for("task=bbc_news", steps=60, every=10,
                      **{"optim.learning_rate": 0.0, "evals.patience": 2})
  summary = train.run(config, str(tmp_path))
  assert summary["stopped_early"] and summary["step"] == 30 and summary["best/step"] == 10
  again = train.run(config, str(tmp_path))
  assert again["step"] == 30


def test_finetuned_classifier_exports_to_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from research import checkpoint, models  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  train.run(config_for("task=bbc_news", steps=2, every=2), workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    model_section = json.load(f)["model"]
  params = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False) \
      .restore_raw_state(2)["params"]
  hf.save_pretrained(model_section, params, str(tmp_path / "hf"))
  theirs = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
  assert theirs.config.num_labels == 5
  ids = np.random.RandomState(0).randint(5, 2000, (2, 16))
  with torch.no_grad():
    expected = theirs(input_ids=torch.tensor(ids)).logits.numpy()
  cfg = models.ModelConfig.from_dict(dict(model_section, dtype="float32"))
  ours = models.build(cfg).apply({"params": params}, ids)["classification_logits"]
  np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)
