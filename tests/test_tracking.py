"""The tracker (metrics.jsonl, TensorBoard, progress bar, summaries) never fails on a missing or
non-finite value: it writes null."""
import json
import math

import matplotlib.image
import numpy as np

from research import tracking


def test_missing_and_nonfinite_values_are_written_as_null(tmp_path):
  tracker = tracking.Tracker(str(tmp_path), start_step=0, total_steps=4, tensorboard=True,
                             progress=True)
  tracker.write(1, {"train/loss": float("nan"), "perf/tokens_per_sec": None})
  tracker.write(2, {"train/loss": np.float32("inf"), "train/grad_norm": -math.inf})
  tracker.write(3, {"train/loss": None, "perf/tokens_per_sec": float("nan")})
  tracker.write(4, {"train/loss": np.float32(2.5), "eval/mlm/loss": float("nan")})
  tracker.advance(4)
  tracker.finish({"step": 4, "eval/mlm/loss": None})
  assert tracking.read_metrics(str(tmp_path)) == [
      {"step": 1, "perf/tokens_per_sec": None, "train/loss": None},
      {"step": 2, "train/grad_norm": None, "train/loss": None},
      {"step": 3, "perf/tokens_per_sec": None, "train/loss": None},
      {"step": 4, "eval/mlm/loss": None, "train/loss": 2.5}]
  with open(tmp_path / tracking.SUMMARY_FILE) as f:
    assert json.load(f) == {"step": 4, "eval/mlm/loss": None}
  assert [l["outcome"] for l in tracking.read_summaries(str(tmp_path))] == ["finished"]
  assert matplotlib.image.imread(tmp_path / tracking.PLOT_FILE).shape[:2] == (400, 700)  # 7x4 in
