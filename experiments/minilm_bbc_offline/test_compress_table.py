"""The compression table's script on a shrunk recipe: every row's command runs, the table's
figures are the workdirs' (slow)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SHRINK = ["--config.train.steps=2", "--config.data.seq_len=32", "--config.evals.every_steps=2",
          "--config.prune.end_step=1", "--config.prune.interval=1",
          "--config.logging.progress=False"]


@pytest.mark.slow
def test_the_table_measures_what_each_command_wrote(tmp_path):
  rows = "int8wa,heads50,sparse50,distill2,sparse80ft"
  proc = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--part=compress",
                         f"--root={tmp_path}", f"--rows={rows}", "--repeats=1",
                         f"--extra={','.join(SHRINK)}"],
                        capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  root = tmp_path / "compress"
  with open(root / "results.json") as f:
    results = json.load(f)["rows"]
  assert list(results) == ["teacher", *rows.split(",")]
  for name, r in results.items():
    assert f"| {r['label']} |" in proc.stdout and r["command"] in proc.stdout
    assert set(r["ms/example"]) == {"1", "32"}
  teacher = results["teacher"]
  assert teacher["agreement"] == 1.0 and teacher["int8"] == 0
  with open(root / "teacher" / "summary.json") as f:  # predict's accuracy = the run's own
    assert teacher["test/accuracy"] == pytest.approx(json.load(f)["test/bbc_news/accuracy"])
  assert results["int8wa"]["int8"] > 0.4 * teacher["params"]
  assert results["int8wa"]["bytes"] < 0.75 * teacher["bytes"]
  assert results["heads50"]["params"] < teacher["params"] == results["sparse50"]["params"]
  from research import checkpoint, params as params_lib  # pylint: disable=g-import-not-at-top
  flat = params_lib.flatten(checkpoint.workdir_params(str(root / "sparse50")))
  kernels = [np.asarray(v) for p, v in flat.items()
             if p.startswith("backbone/") and p.endswith("/kernel") and "/pooler/" not in p]
  assert sum(int((k == 0).sum()) for k in kernels) == pytest.approx(
      0.5 * sum(k.size for k in kernels), abs=1)
  assert teacher["nonzero"] - results["sparse50"]["nonzero"] == pytest.approx(
      0.5 * sum(k.size for k in kernels), abs=10)
  with open(root / "sparse80ft" / "summary.json") as f:
    assert json.load(f)["prune/sparsity"] == pytest.approx(0.8, abs=1e-4)
  with open(root / "distill2" / "config.json") as f:
    assert json.load(f)["model"]["num_layers"] == 2
  assert np.isfinite([r["ms/example"]["32"] for r in results.values()]).all()
