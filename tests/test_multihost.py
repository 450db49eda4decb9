"""Two local processes (jax.distributed on loopback) train like one process with all devices."""
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from research import tracking

FLAGS = ["--config=configs/mlm.py:runlocal", "--config.train.steps=6",
         "--config.train.batch_size=16", "--config.data.vocab_size=2048",
         "--config.data.seq_len=64", "--config.evals.every_steps=6", "--config.evals.batches=2",
         "--config.ckpt.every_steps=3", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False",
         "--config.schedule.warmup_steps=0"]  # no warmup: the compared steps move the weights


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def test_two_processes_match_one(tmp_path):
  single = str(tmp_path / "single")
  one = subprocess.run([sys.executable, "-m", "research.main", *FLAGS, f"--workdir={single}"],
                       cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]

  multi, port = str(tmp_path / "multi"), _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "research.main", *FLAGS, f"--workdir={multi}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  expected = tracking.read_metrics(single)
  got = tracking.read_metrics(multi)
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  assert expected[-1]["train/loss"] < expected[0]["train/loss"] - 0.1  # the weights moved
  for a, b in zip(got, expected):
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
  assert got[-1]["eval/mlm/loss"] == pytest.approx(expected[-1]["eval/mlm/loss"], rel=1e-4)
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3", "6"]
