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


def test_tensorboard_events_without_importing_torch(tmp_path):
  """tensorboardX would import torch (seconds of start-up) where it is installed: a run's tracker
  writes its TensorBoard events without it, and torch still imports afterwards."""
  import struct  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO, require  # pylint: disable=g-import-not-at-top
  require("torch", "the point is an installed torch that is not imported")
  script = (
      "import sys\n"
      "from research import tracking\n"
      f"t = tracking.Tracker({str(tmp_path)!r}, start_step=0, total_steps=1, tensorboard=True,"
      " progress=False)\n"
      "t.write(1, {'train/loss': 2.5})\n"
      "t.finish({'step': 1})\n"
      "print('torch' in sys.modules)\n"
      "import torch\n"
      "print(torch.ones(2).sum().item())\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["False", "2.0"]
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events_file, = (tmp_path / "tensorboard").iterdir()
  data, scalars = events_file.read_bytes(), []
  while data:  # TFRecords: length (8 bytes), its CRC (4), the event, its CRC (4)
    length, = struct.unpack("<Q", data[:8])
    event = event_pb2.Event.FromString(data[12:12 + length])
    data = data[16 + length:]
    scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  assert scalars == [(1, "train/loss", 2.5)]
