"""The README's quick-start jobs, exactly as written (slow: minutes each on 2 CPU cores)."""
import json
import os
import time

import pytest

from conftest import run_cli
from research import tracking


@pytest.mark.slow
@pytest.mark.parametrize("name, prefix", [("mlm", "mlm"), ("clm", "clm")])
def test_runlocal_job_learns_within_five_minutes(tmp_path, name, prefix):
  start = time.time()
  proc = run_cli(f"--config=configs/{name}.py:runlocal", f"--workdir={tmp_path}")
  seconds = time.time() - start
  assert proc.returncode == 0, proc.stderr[-3000:]
  print(f"{name} runlocal: {seconds:.0f} s")
  assert seconds < 300
  records = tracking.read_metrics(str(tmp_path))
  first = records[0]["train/loss"]  # step 1
  last = sum(r["train/loss"] for r in records[-5:]) / 5  # the last 5 logged steps, less noisy
  assert last < 0.75 * first, (first, last)  # well over 20% lower
  with open(os.path.join(tmp_path, "summary.json")) as f:
    summary = json.load(f)
  accuracy, baseline = summary[f"eval/{prefix}/accuracy"], summary[f"eval/{prefix}/unigram_accuracy"]
  print(f"{name}: train loss {first:.3f} -> {last:.3f}; eval accuracy {accuracy:.4f} vs "
        f"unigram baseline {baseline:.4f}")
  assert accuracy > 1.5 * baseline
