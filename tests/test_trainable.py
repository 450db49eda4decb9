"""`optim.trainable`: the PEFT seam. Frozen parameters stay as initialised, through a real run."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from research import checkpoint
from research import params as params_lib


def _run(workdir, steps):
  return run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}",
                 f"--config.train.steps={steps}", "--config.train.batch_size=8",
                 "--config.data.vocab_size=1024", "--config.data.seq_len=32",
                 "--config.evals.batches=1", "--config.ckpt.every_steps=1", "--config.ckpt.keep=4",
                 "--config.schedule.warmup_steps=0", "--config.logging.progress=False",
                 "--config.logging.tensorboard=False", "--config.optim.trainable=('^heads_mlm/',)")


@pytest.mark.slow  # ~18 s: moved out of the default suite's 15 minutes
def test_only_the_trainable_parameters_change_and_resume(tmp_path):
  workdir = str(tmp_path / "w")
  proc = _run(workdir, 4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  first = params_lib.flatten(_params_at(workdir, 1))
  last = params_lib.flatten(_params_at(workdir, 4))
  changed = {p for p in first if not np.array_equal(first[p], last[p])}
  assert changed and all(p.startswith("heads_mlm/") for p in changed), sorted(changed)[:5]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  head = sum(v.size for p, v in last.items() if p.startswith("heads_mlm/"))
  assert summary["params/trainable"] == head < summary["params/total"]
  # The optimizer state of a partly frozen model checkpoints and resumes.
  proc = _run(workdir, 6)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 4" in proc.stderr
  resumed = params_lib.flatten(_params_at(workdir, 6))
  assert all(np.array_equal(first[p], resumed[p]) for p in first if p not in changed)


def _params_at(workdir, step):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  return ckpt.restore_raw_state(step)["params"]
