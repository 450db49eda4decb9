"""The headline check on a 1-step run of the recipe: on short texts, research.predict and the
transformers export of the same workdir give the same ids, logits, probabilities and labels
(slow). A tokenizer whose own padding leaks into our rows ([CLS] words [PAD]... [SEP]) fails it."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CONFIG = "--config=experiments/minilm_bbc_offline/configs/minilm_bbc.py"
SHRINK = ["--config.train.steps=1", "--config.data.seq_len=32", "--config.evals.every_steps=1",
          "--config.logging.progress=False"]
TOLERANCE = 1e-4  # float32 on both sides; the leaked padding moved logits by far more


def _headlines(root, *flags):
  return subprocess.run([sys.executable, os.path.join(HERE, "headlines.py"), f"--root={root}",
                         *flags], cwd=REPO, capture_output=True, text=True, timeout=900)


def _jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _topic_of_headline() -> dict:
  """Each article's first line -> its topic, read from the corpus files (no headline of the
  corpus names two topics)."""
  from research.data import sources  # pylint: disable=g-import-not-at-top
  return {text.partition("\n")[0].strip(): topic for topic, text in sources.read_bbc_news()}


@pytest.mark.slow
def test_predict_and_the_transformers_export_agree_on_headlines(tmp_path):
  workdir = tmp_path / "peft" / "full"
  train = subprocess.run([sys.executable, "-m", "research.main", CONFIG, f"--workdir={workdir}",
                          *SHRINK], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert train.returncode == 0, train.stderr[-3000:]
  proc = _headlines(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "headlines.json") as f:
    full = json.load(f)["rows"]["full"]
  assert full["exported"] == "yes"
  assert full["label_disagreements"] == 0, full
  assert full["max_logit_diff"] < TOLERANCE, full
  assert full["max_prob_diff"] < TOLERANCE, full
  assert full["input_id_mismatches"] == 0, full
  # The inputs are the 223 test articles' headlines; the accuracy is against their topics.
  headlines = [r["text"] for r in _jsonl(tmp_path / "headlines" / "headlines.jsonl")]
  predictions = _jsonl(tmp_path / "headlines" / "predictions" / "full.jsonl")
  topics = _topic_of_headline()
  assert len(headlines) == len(predictions) == 223 and set(headlines) <= set(topics)
  correct = sum(p["label"] == topics[h] for h, p in zip(headlines, predictions))
  assert full["headline_accuracy"] == pytest.approx(correct / 223)
  with open(workdir / "summary.json") as f:
    assert full["article_accuracy"] == json.load(f)["test/bbc_news/accuracy"]
  assert f"| peft/full | {correct / 223:.4f} |" in proc.stdout


def test_a_missing_root_or_workdir_ends_in_one_line(tmp_path):
  root = tmp_path / "nowhere"
  proc = _headlines(root)
  assert proc.returncode != 0
  assert proc.stderr.strip() == (f"error: --root '{root}' does not exist: run "
                                 f"experiments/minilm_bbc_offline/run.py --root={root} first")
  proc = _headlines(tmp_path, "--rows=lora")
  assert proc.returncode != 0
  assert proc.stderr.strip().startswith(f"error: {tmp_path / 'peft' / 'lora'} is not a finished "
                                        "workdir")
