"""Fine-tuning end to end on the embedded corpus and on fixture files: every task kind, reports,
best checkpoint, early stopping, multi-task, predictions, and bad input."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

import finetune as finetune_config
from conftest import REPO, require
from finetune_fixtures import conll_dir, glue_dir, squad_dir, write_jsonl
from research import checkpoint, models, tracking, train
from research.data import encoding
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError
from research.tasks import classification, mixture
from research.train import step as step_lib


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


@pytest.mark.parametrize("best_metric", ["", "eval/bbc_news/loss"])
def test_when_the_last_step_is_final_its_evaluation_writes_the_eval_reports(
    tmp_path, monkeypatch, best_metric):
  """The final parameters are the last step's without a best checkpoint, or with one kept at
  the last step: the loop's evaluation of them writes the eval split's reports, and the end of
  the run evaluates the test split only (the eval split used to be evaluated a second time there,
  for its reports, and the best parameters read back from disk)."""
  calls, evaluate = [], classification.ClassificationTask.evaluate

  def counted(self, split, context):
    calls.append((split, context.report_dir is not None))
    return evaluate(self, split, context)
  monkeypatch.setattr(classification.ClassificationTask, "evaluate", counted)
  # No warmup: the eval loss falls from step 2 to step 4 (measured: 1.6593 -> 1.6438).
  summary = train.run(config_for("task=bbc_news", steps=4, every=2, **{
      "evals.best_metric": best_metric, "evals.best_mode": "min",
      "schedule.warmup_steps": 0}), str(tmp_path))
  assert summary.get("best/step", 4) == 4
  # step 2's evaluation, step 4's (with the reports), the test split's
  assert calls == [("eval", False), ("eval", True), ("test", True)]
  assert summary["eval_step"] == summary["final_step"] == 4
  with open(tmp_path / "reports" / "eval_bbc_news_report.json") as f:
    report = json.load(f)
  supports = sum(r["support"] for r in report.values())
  correct = sum(round(r["recall"] * r["support"]) for r in report.values())
  assert supports == summary["data/eval_rows"]
  assert correct / supports == pytest.approx(summary["eval/bbc_news/accuracy"], abs=1e-9)
  assert os.path.exists(tmp_path / "reports" / "eval_bbc_news_confusion.png")


@pytest.mark.slow  # ~20 s: the default suite's 15 minutes
def test_bbc_news_reports_best_checkpoint_and_predictions(tmp_path):
  workdir = str(tmp_path)
  # A tiny encoder from scratch sits at the majority class for ~50 steps, then learns (measured:
  # eval accuracy 0.23 at step 30 at learning rates 5e-4 to 3e-3; 0.53 at step 80).
  config = config_for("task=bbc_news", steps=80, every=20,
                      **{"schedule.warmup_steps": 5, "optim.learning_rate": 2e-3})
  config.train.batch_size = 32
  summary = train.run(config, workdir)
  for split in ("eval", "test"):
    with open(os.path.join(workdir, "reports", f"{split}_bbc_news_report.json")) as f:
      report = json.load(f)
    supports = [r["support"] for r in report.values()]
    assert sum(supports) == summary[f"data/{split}_rows"]
    majority = max(supports) / sum(supports)  # always answering the commonest topic
    accuracy = summary[f"{split}/bbc_news/accuracy"]
    assert accuracy > majority + 0.15
    assert summary[f"{split}/bbc_news/mcc"] > 0.2  # 0 for any constant answer
    constant_f1 = 2 * majority / (1 + majority) / len(supports)  # macro-F1 of that answer
    assert summary[f"{split}/bbc_news/f1_macro"] > 3 * constant_f1
    png = os.path.join(workdir, "reports", f"{split}_bbc_news_confusion.png")
    assert matplotlib.image.imread(png).shape[:2] == (550, 550)  # (2.5 + 0.6 x 5 classes) in
  records = {r["step"]: r for r in tracking.read_metrics(workdir) if "eval/bbc_news/accuracy" in r}
  best = max(r["eval/bbc_news/accuracy"] for r in records.values())
  assert summary["best/eval/bbc_news/accuracy"] == best
  # the first evaluation that reached the best: a tie is no improvement
  assert summary["best/step"] == min(s for s, r in records.items()
                                     if r["eval/bbc_news/accuracy"] == best)
  with open(os.path.join(workdir, "labels.json")) as f:
    info = json.load(f)["bbc_news"]
  names = info["names"]
  assert names == ["business", "entertainment", "politics", "sports", "tech"]
  rows = [{"text": "Shares fell as the bank cut its profit forecast"},
          {"text": "The striker scored twice in the cup final"}]
  out = predict(workdir, rows)
  # What the best parameters' head gives those texts, computed here: softmax over its logits,
  # the label the most probable class's name.
  run_config = checkpoint.workdir_config(workdir)
  features, _ = encoding.encode_texts(
      tokenizer_lib.from_file(os.path.join(workdir, "tokenizer.json")), rows,
      run_config["data"]["seq_len"])
  batch = {k: jnp.asarray(np.stack([f[k] for f in features])) for k in features[0]}
  model = models.build(models.ModelConfig.of_run(run_config))
  logits = np.asarray(step_lib.apply_model(model, checkpoint.workdir_params(workdir, best=True),
                                           batch)[f"{info['head']}_logits"], np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  assert [o["label"] for o in out] == [names[i] for i in probs.argmax(-1)]
  for o, p in zip(out, probs):
    np.testing.assert_allclose([o["scores"][n] for n in names], p, rtol=1e-4)


@pytest.mark.slow
def test_local_files_with_string_labels(tmp_path):
  rows = [{"text": f"{w} movie number {i}", "label": "pos" if w in ("great", "lovely") else "neg"}
          for i, w in enumerate(["great", "awful", "lovely", "boring"] * 10)]
  write_jsonl(tmp_path / "train.jsonl", rows)
  (tmp_path / "eval.csv").write_text("text,label\n" + "\n".join(
      f"{r['text']},{r['label']}" for r in rows[:12]) + "\n")
  config = config_for(f"task=local,train={tmp_path / 'train.jsonl'},eval={tmp_path / 'eval.csv'}")
  summary = train.run(config, str(tmp_path / "run"))
  assert summary["data/train_rows"] == 40 and summary["data/eval_rows"] == 12
  eval_labels = [r["label"] for r in rows[:12]]
  majority = max(eval_labels.count("pos"), eval_labels.count("neg")) / len(eval_labels)
  assert summary["eval/local/accuracy"] >= max(0.9, majority + 0.3)
  assert summary["eval/local/roc_auc"] >= 0.9  # 0.5 for a constant score
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


@pytest.mark.slow
def test_multilabel_and_regression_local(tmp_path):
  rows = [{"text": f"{a} and {b}", "label": [a, b]} for a in ("red", "green", "blue")
          for b in ("cat", "dog")] * 4
  write_jsonl(tmp_path / "ml.jsonl", rows)
  fast = {"schedule.warmup_steps": 2, "optim.learning_rate": 3e-3}
  summary = train.run(config_for(f"task=local,kind=multilabel,train={tmp_path / 'ml.jsonl'},"
                                 f"eval={tmp_path / 'ml.jsonl'}", steps=20, every=20, **fast),
                      str(tmp_path / "ml"))
  # Constant predictors: the commonest label set (exact match 1/6); every label on (micro-F1 of
  # precision 2/5, recall 1 = 0.57).
  sets = [tuple(sorted(r["label"])) for r in rows]
  best_set = max(sets.count(x) for x in set(sets)) / len(sets)
  precision = 2 / len({l for r in rows for l in r["label"]})
  all_on_f1 = 2 * precision / (precision + 1)
  assert summary["eval/local/exact_match"] >= max(0.8, best_set + 0.3)
  assert summary["eval/local/f1_micro"] >= max(0.9, all_on_f1 + 0.2)
  reg = [{"text": f"{n} stars", "label": float(n)} for n in range(1, 6)] * 8
  write_jsonl(tmp_path / "reg.jsonl", reg)
  summary = train.run(config_for(f"task=local,kind=regression,train={tmp_path / 'reg.jsonl'},"
                                 f"eval={tmp_path / 'reg.jsonl'}", steps=40, every=40, **fast),
                      str(tmp_path / "reg"))
  variance = float(np.var([r["label"] for r in reg]))  # the MSE of always predicting the mean
  assert summary["eval/local/mse"] < 0.25 * variance
  assert summary["eval/local/pearson"] > 0.8 and summary["eval/local/spearman"] > 0.7


def test_ner_end_to_end_and_entity_spans(tmp_path):
  data = conll_dir(tmp_path)
  workdir = str(tmp_path / "run")
  summary = train.run(config_for(f"task=conll2003,data_dir={data}", steps=60, every=30,
                                 **{"optim.learning_rate": 3e-3}), workdir)
  for split in ("eval", "test"):  # all-'O' scores 0 on every entity type; measured: all 1.0
    for key in ("f1", "precision", "recall", "PER/f1", "LOC/f1", "ORG/f1", "strict/f1"):
      assert summary[f"{split}/conll2003/{key}"] >= 0.8, (split, key)
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
  # Baseline: always answering the commonest gold answer of the eval split (a place name).
  answers = [json.loads(l)["answers"]["text"][0]
             for l in (data / "validation.jsonl").read_text().splitlines()]
  constant_em = 100 * max(answers.count(a) for a in set(answers)) / len(answers)
  assert summary["eval/squad/exact_match"] >= max(80, constant_em + 20)  # measured 100 vs 60
  assert summary["eval/squad/f1"] >= summary["eval/squad/exact_match"]
  context = "In the spring, Ada Lovelace travelled to Madrid for a conference."
  out = predict(workdir, [{"id": "q1", "question": "Where did Ada Lovelace travel to?",
                           "context": context}])[0]
  assert out["id"] == "q1" and out["answer"] == "Madrid"  # a non-empty span ...
  assert context[out["start"]:out["end"]] == out["answer"]  # ... at its character offsets


def test_multitask_glue_two_heads_one_encoder(tmp_path):
  mrpc, stsb = glue_dir(tmp_path, "mrpc"), glue_dir(tmp_path, "stsb")
  config = config_for("task=mrpc+stsb", steps=30, every=30,
                      **{"schedule.warmup_steps": 2, "optim.learning_rate": 3e-3})
  config.tasks.mrpc.data_dir, config.tasks.stsb.data_dir = str(mrpc), str(stsb)
  config.logging.every_steps = 1
  summary = train.run(config, str(tmp_path / "run"))
  def labels(d):
    return [json.loads(l)["label"] for l in (d / "validation.jsonl").read_text().splitlines()]
  mrpc_labels, stsb_labels = labels(mrpc), labels(stsb)
  majority = max(mrpc_labels.count(0), mrpc_labels.count(1)) / len(mrpc_labels)
  # Both heads learnt the fixture's rule (sentence2 repeats sentence1 or not), each better than
  # a constant answer: the majority label; the mean score (MSE = the labels' variance).
  assert summary["eval/mrpc/accuracy"] >= max(0.9, majority + 0.2)
  assert summary["eval/mrpc/f1"] >= 0.9
  assert summary["eval/stsb/pearson"] >= 0.9 and summary["eval/stsb/spearman"] >= 0.7
  assert summary["eval/stsb/mse"] < 0.25 * np.var(stsb_labels)
  np.testing.assert_allclose(summary["eval/mrpc/score"],
                             (summary["eval/mrpc/accuracy"] + summary["eval/mrpc/f1"]) / 2)
  np.testing.assert_allclose(summary["eval/stsb/score"],
                             (summary["eval/stsb/pearson"] + summary["eval/stsb/spearman"]) / 2)
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["model"]["heads"] == ["mrpc=classification:2", "stsb=classification:1"]
  records = tracking.read_metrics(str(tmp_path / "run"))
  trained = [[r[f"train/{t}/loss"] for r in records if f"train/{t}/loss" in r]
             for t in ("mrpc", "stsb")]
  assert all(len(losses) >= 5 for losses in trained)  # both tasks drawn, steps apart
  assert len(trained[0]) + len(trained[1]) == 30  # one task per step (proportional mixture)


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
  # eval/* are the last evaluation's, test/* and the reports the best step's parameters': the
  # summary names both steps.
  assert summary["eval_step"] == 30 and summary["final_step"] == 10
  evals = [r for r in tracking.read_metrics(str(tmp_path)) if "eval/bbc_news/accuracy" in r]
  assert [r["step"] for r in evals] == [10, 20, 30]
  assert all(r["eval/bbc_news/loss"] > 0 for r in evals)  # loss.png's eval curve
  again = train.run(config, str(tmp_path))
  assert again["step"] == 30


def test_finetuned_classifier_exports_to_transformers(tmp_path):
  torch = require("torch", "the export check runs transformers (pip install -e '.[test]')")
  transformers = require("transformers", "the export check runs transformers")
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
