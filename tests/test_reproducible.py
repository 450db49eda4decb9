"""The same command, run twice from scratch in two processes, trains the same way.

Same tokenizer.json byte for byte, same metrics (==) at every step; only times may differ.
"""
import concurrent.futures
import json
import re

import pytest

from conftest import run_cli
from research import tracking

SHORT = ["--config.train.steps=6", "--config.train.batch_size=8", "--config.data.seq_len=64",
         "--config.evals.every_steps=3", "--config.evals.batches=1",
         "--config.ckpt.every_steps=100", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]
TIMES = re.compile(r"^perf/|_seconds$")  # perf/tokens_per_sec, perf/compile_seconds, wall_seconds


def _without_times(record: dict) -> dict:
  return {k: v for k, v in record.items() if not TIMES.search(k)}


@pytest.mark.slow  # ~30 s: moved out of the default suite's 15 minutes
@pytest.mark.parametrize("name", ["mlm", "clm"])
def test_two_fresh_runs_are_identical(tmp_path, name):
  workdirs = [tmp_path / "first", tmp_path / "second"]
  command = [f"--config=configs/{name}.py:runlocal", *SHORT]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # at once: timings differ, not results
    procs = list(pool.map(lambda w: run_cli(*command, f"--workdir={w}"), workdirs))
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-3000:]

  first, second = ((w / "tokenizer.json").read_bytes() for w in workdirs)
  assert first == second, "the two runs trained different tokenizers"

  first, second = (tracking.read_metrics(str(w)) for w in workdirs)
  assert [r["step"] for r in first] == list(range(1, 7))
  assert all("train/loss" in r and "train/grad_norm" in r and "train/lr" in r for r in first)
  assert sum(f"eval/{name}/loss" in r for r in first) == 2
  for a, b in zip(first, second):
    assert _without_times(a) == _without_times(b), a["step"]

  first, second = (json.loads((w / "summary.json").read_text()) for w in workdirs)
  assert _without_times(first) == _without_times(second)
