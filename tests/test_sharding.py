"""The same run on 8 simulated CPU devices under three meshes logs the 1-device losses."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
from conftest import tiny_config
from research import train, tracking
out = {}
for mesh in json.loads(sys.argv[1]):
  config = tiny_config("mlm", steps=6)
  config.logging.tensorboard = False
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  workdir = sys.argv[2] + "/" + "_".join(map(str, mesh))
  train.run(config, workdir)
  out[str(mesh)] = [r["train/loss"] for r in tracking.read_metrics(workdir)]
print("LOSSES " + json.dumps(out))
"""


def _losses(meshes, devices, workdir):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(meshes), workdir], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("LOSSES "))
  return json.loads(line[len("LOSSES "):])


def test_meshes_match_single_device(tmp_path):
  single = _losses([[1, 1, 1]], 1, str(tmp_path / "one"))["[1, 1, 1]"]
  multi = _losses([[8, 1, 1], [2, 4, 1], [2, 2, 2]], 8, str(tmp_path / "eight"))
  assert len(single) == 6
  for mesh, losses in multi.items():
    assert losses == pytest.approx(single, rel=1e-4), mesh
