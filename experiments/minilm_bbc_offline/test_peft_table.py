"""The PEFT comparison's commands run as the README shows them; LoRA's claim holds (slow)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = "--config=experiments/minilm_bbc_offline/configs/minilm_bbc.py"
FULL_FINE_TUNING_TEST_ACCURACY = 0.9776  # README table: `run.py --part=peft --methods=full`


def _run(root, *flags):
  proc = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--part=peft",
                         f"--root={root}", *flags], capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(root, "peft", "results.json")) as f:
    return json.load(f), proc.stdout


@pytest.mark.slow
def test_the_table_runs_each_method_through_the_command_line(tmp_path):
  methods = "full,bitfit"  # lora: the test below
  results, out = _run(tmp_path, f"--methods={methods}", "--timing_steps=3",
                      "--extra=--config.train.steps=2,--config.evals.every_steps=2,"
                        "--config.data.seq_len=32")
  for method in methods.split(","):
    r = results[method]
    assert f"{method}: python -m research.main {CONFIG}" in out
    with open(tmp_path / "peft" / method / "summary.json") as f:
      summary = json.load(f)
    assert (r["trainable"], r["test/accuracy"]) == (summary["params/trainable"],
                                                    summary["test/bbc_news/accuracy"])
  assert results["full"]["trainable"] == results["full"]["total"]
  assert results["bitfit"]["trainable"] < 0.01 * results["bitfit"]["total"]
  assert "| tfidf+logreg |" in out


@pytest.mark.claim  # 8 minutes: `pytest -m claim`
def test_lora_on_minilm_is_within_a_point_of_full_fine_tuning(tmp_path):
  """Issue 11's claim: peft=lora on the MiniLM base trains under 1% of the parameters and lands
  within 1 point of full fine-tuning's test accuracy (the README's measured figure)."""
  results, _ = _run(tmp_path, "--methods=lora")
  lora = results["lora"]
  assert lora["trainable"] < 0.01 * lora["total"]
  assert lora["test/accuracy"] >= FULL_FINE_TUNING_TEST_ACCURACY - 0.01, lora
