"""The README's quick-start jobs, exactly as written (slow: minutes each on 2 CPU cores), and the
cost estimator's CPU check on the same runs."""
import json
import os
import time

import pytest

from conftest import run_cli
from test_cost import cost_json, recorded_step_seconds
from research import tracking


@pytest.mark.slow
@pytest.mark.parametrize("name, prefix", [("mlm", "mlm"), ("clm", "clm")])
def test_runlocal_job_learns_within_five_minutes(tmp_path, name, prefix):
  """The job learns within five minutes; and `research.cost --calibrate` (its own timing of the
  step on a synthetic batch, in its own process) predicts the time of the job's training steps
  within 25% of what the run records. The machine's rate moves with whatever else runs on it, so
  it is measured just before and just after the run and their mean predicts the run between."""
  calibrate = lambda: cost_json(f"--config=configs/{name}.py:runlocal", "--nomemory",
                                "--calibrate")
  before = calibrate()
  start = time.time()
  proc = run_cli(f"--config=configs/{name}.py:runlocal", f"--workdir={tmp_path}")
  seconds = time.time() - start
  after = calibrate()
  assert proc.returncode == 0, proc.stderr[-3000:]
  print(proc.stdout)  # the summary the user sees (CI's quick start runs this test with -s)
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

  measured, steps = recorded_step_seconds(str(tmp_path), before["batch"] * before["seq_len"])
  assert steps == summary["step"] - 1  # every step but the compiling first one
  rates = [out["this_machine"]["flops_per_sec"] for out in (before, after)]
  predicted = before["flops_per_step"] * steps / (sum(rates) / 2)
  print(f"{name}: cost predicted {predicted:.1f} s, recorded {measured:.1f} s over {steps} steps; "
        f"{rates[0] / 1e9:.2f} GFLOP/s measured before the run, {rates[1] / 1e9:.2f} after")
  assert abs(predicted - measured) <= 0.25 * measured
