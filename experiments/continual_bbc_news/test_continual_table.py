"""The continual-learning table's script on a shrunk recipe: its rows' commands run, and the table
shows what their summaries hold (slow)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SHRINK = ["--config.train.steps=2", "--config.data.seq_len=32", "--config.train.batch_size=8",
          "--config.evals.every_steps=2", "--config.logging.progress=False",
          "--config.logging.tensorboard=False", "--config.continual.ewc.fisher_examples=8"]


@pytest.mark.slow
def test_the_table_shows_what_each_run_wrote(tmp_path):
  rows = ["task_lora"]
  proc = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), f"--root={tmp_path}",
                         f"--rows={','.join(rows)}", f"--extra={','.join(SHRINK)}"],
                        capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert list(results) == rows
  r = results["task_lora"]
  with open(tmp_path / "task_lora" / "summary.json") as f:
    summary = json.load(f)
  assert r["average_accuracy"] == summary["continual/average_accuracy"]
  assert r["bwt"] == summary["continual/bwt"] and r["R"][2][0] == summary["continual/R/3/1"]
  assert f"| {r['sequence']} | {r['method']} | {r['average_accuracy']:.4f} |" in proc.stdout
  assert r["command"] in proc.stdout
  # A LoRA per task trains under 1% of the model, and forgets nothing: task j after the last
  # stage is read through stage j's adapter and head, exactly as stage j left them.
  assert r["trainable"] < 0.01 * summary["params/total"]
  assert r["bwt"] == 0.0 and r["R"][2][:2] == [r["R"][0][0], r["R"][1][1]]
