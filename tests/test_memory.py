"""Per-device memory of the train step (`research.memory`): FSDP shards the state, remat trades
saved activations for recomputation, and XLA's arguments are the state and batch shards."""
import json
import os
import subprocess
import sys

import jax
import pytest

from conftest import REPO
from research import memory, sharding

# A tiny encoder with a small vocabulary, so each compile takes seconds.
TINY = ["--kinds=encoder", "--size=tiny", "--batch=16", "--seq_len=64", "--set=vocab_size=1024"]


def run_memory(*args):
  """`python -m research.memory ARGS --json` as a user types it: its rows (bytes per device)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  proc = subprocess.run([sys.executable, "-m", "research.memory", *args, "--json"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]


# The abstract state on 8 simulated devices: shard shapes only, nothing compiled (seconds).
STATE_SCRIPT = r"""
import json, sys
from research import memory, models, sharding
from research.errors import UserError
from research.train import optim
out = {}
for mesh in ("8x1x1", "1x8x1", "1x1x8"):
  config = memory.memory_config("encoder", "tiny", 16, 64, "bfloat16", {"vocab_size": 1024})
  model, (tx, _) = models.build(models.ModelConfig.from_dict(config.model)), optim.build(config, ())
  try:
    state, _ = memory.abstract_state(model, tx, config, sharding.make_mesh(memory.parse_mesh(mesh)),
                                     sharding.rules_of(config))
    out[mesh] = {"params": memory.shard_bytes(state.params),
                 "optimizer": memory.shard_bytes(state.opt_state)}
  except UserError as e:
    out[mesh] = {"error": str(e)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tiny_state_bytes():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", STATE_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


def test_fsdp_divides_parameters_and_optimizer_state_by_its_size(tiny_state_bytes):
  data, fsdp = tiny_state_bytes["8x1x1"], tiny_state_bytes["1x8x1"]
  # data=8 replicates the state: each device holds all of it (AdamW: 2 moments per parameter,
  # and a step count).
  assert data["optimizer"] == pytest.approx(2 * data["params"], abs=64)
  # fsdp=8 shards it: 1/8 per device, up to the few small vectors without an 'embed' axis.
  replicated = data["params"] + data["optimizer"]
  assert (fsdp["params"] + fsdp["optimizer"]) * 8 == pytest.approx(replicated, rel=0.1)


def test_mesh_that_cannot_split_a_parameter_is_one_line(tiny_state_bytes):
  # The tiny model's 2 attention heads over tensor=8 (jax alone fails with a traceback).
  assert tiny_state_bytes["1x1x8"]["error"] == (
      "mesh {'data': 1, 'fsdp': 1, 'tensor': 8} cannot split params/backbone/layer_0/attention/"
      "key/bias of shape (2, 64): its dimension 0 (2) over tensor (8 ways); choose mesh sizes "
      "that divide it")


@pytest.mark.slow
def test_command_compiles_the_step_on_the_state_and_batch_shards():
  """The command on 8 simulated devices: XLA's arguments of the compiled step are exactly the
  state and batch shards computed from the shardings, and FSDP divides them as above."""
  data, fsdp = run_memory(*TINY, "--meshes=8x1x1,1x8x1", "--remat=none")
  assert (data["mesh"], fsdp["mesh"]) == ({"data": 8, "fsdp": 1, "tensor": 1},
                                          {"data": 1, "fsdp": 8, "tensor": 1})
  assert (fsdp["params"] + fsdp["optimizer"]) * 8 == pytest.approx(
      data["params"] + data["optimizer"], rel=0.1)
  for row in (data, fsdp):
    assert row["argument"] == row["state"] + row["batch_shard"]
    assert row["alias"] == row["state"]  # the donated state is reused for the new state
    assert row["total"] == row["argument"] + row["output"] - row["alias"] + row["temp"]
  assert data["batch_shard"] == fsdp["batch_shard"]  # 16 rows over 8 data-parallel devices
  # Each of 8 data-parallel devices keeps the activations of its 2 rows: those of 1 device
  # training 2 rows.
  (one,) = run_memory(*TINY, "--batch=2", "--meshes=1x1x1", "--remat=none", "--devices=1")
  assert data["activations"] == one["activations"]


@pytest.mark.slow
def test_remat_full_saves_only_each_blocks_input():
  """Measured (tiny encoder, float32, batch 8 x 64, hidden 128): one more layer adds 262,152
  saved bytes with remat=full (its input, 8 x 64 x 128 x 4 = 262,144, and its 8-byte dropout key)
  and 8,545,600 without remat (attention probabilities, MLP activations, dropout masks...)."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  saved = {}
  for remat in ("none", "full"):
    for layers in (2, 3):
      config = memory.memory_config("encoder", "tiny", 8, 64, "float32",
                                    {"remat": remat, "vocab_size": 1024, "num_layers": layers})
      saved[remat, layers] = memory.train_step_memory(config, mesh)["activations"]
  block_input = 8 * 64 * 128 * 4
  per_layer_full = saved["full", 3] - saved["full", 2]
  per_layer_none = saved["none", 3] - saved["none", 2]
  assert block_input <= per_layer_full <= block_input + 64
  assert per_layer_none > 20 * per_layer_full
  assert saved["full", 2] < saved["none", 2]


def test_bad_mesh_flag_is_one_line():
  with pytest.raises(SystemExit, match=r"^error: --meshes wants DATAxFSDPxTENSOR sizes like "
                                       r"2x2x2, got '2x2'$"):
    memory.parse_mesh("2x2")
