"""`python -m research.aot`: configs compiled ahead of time for TPU topologies (libtpu's XLA TPU
compiler on this CPU machine): the slices' devices, bad input in one line, and (slow) the runlocal
and base-width configs of both objectives compiled for v5e 2x2 and v5p 2x2x4 on data, fsdp and
tensor meshes, FSDP dividing the compiled state, XLA's FLOPs against research.perf's formula, and a
config too large for the chip reported in one line.

XLA's TPU compiler takes 15-60 s per step of these shrunken configs on a 2-core machine (BERT-base's
12 layers: about 2 minutes), so the base-width configs here have 1 layer."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from research import config_lib, tpu
from research.errors import UserError

pytest.importorskip("libtpu", reason="research.aot compiles with libtpu (the test extra)")


def run_aot(*args, prelude=""):
  """`python -m research.aot ARGS` as a user types it (`prelude`: Python run first)."""
  code = f"{prelude}\nfrom research import aot\naot.entry()"
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600)


def one_line(proc, code=2) -> str:
  """The command failed with `code` and printed exactly one line on stderr."""
  assert proc.returncode == code, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


@pytest.fixture
def libtpu_env(monkeypatch):
  """What `tpu.tpu_devices` sets for libtpu, undone after the test."""
  for name in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
    monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.delenv(name)


@pytest.mark.parametrize("name, devices, kind", [
    ("v4:2x2x2", 8, "TPU v4"), ("v5e:2x4", 8, "TPU v5 lite"), ("v5p:2x2x4", 16, "TPU v5"),
    ("v6e:2x2", 4, "TPU v6 lite"), ("v5e:16x16", 256, "TPU v5 lite")])
def test_topology_is_one_device_per_chip(libtpu_env, name, devices, kind):
  found = tpu.tpu_devices(tpu.parse_topology(name))
  assert (len(found), found[0].device_kind, found[0].platform) == (devices, kind, "tpu")


def test_unknown_topology_lists_the_known_forms():
  for bad in ("v9:2x2", "v5e:2x2x2", "v5p:2x2", "v5e:2xa", "v5e"):
    with pytest.raises(UserError) as e:
      tpu.parse_topology(bad)
    assert str(e.value) == (f"--topology: unknown topology {bad!r}; known forms: v4:AxBxC, "
                            "v5e:AxB, v5p:AxBxC, v6e:AxB (chips per side, e.g. v5e:2x4)")
  line = one_line(run_aot("--config=configs/mlm.py:runlocal", "--topology=v9:4x4"))
  assert line == ("error: --topology: unknown topology 'v9:4x4'; known forms: v4:AxBxC, v5e:AxB, "
                  "v5p:AxBxC, v6e:AxB (chips per side, e.g. v5e:2x4)")


def test_mesh_that_does_not_match_the_slice_is_one_line():
  line = one_line(run_aot("--config=configs/mlm.py:runlocal", "--topology=v5e:2x2",
                          "--config.mesh.data=2", "--config.mesh.fsdp=4"))
  assert line == ("error: --topology=v5e:2x2 has 4 devices (4 chips), but the config's mesh "
                  "{'data': 2, 'fsdp': 4, 'tensor': 1} does not match them: mesh {'data': 2, "
                  "'fsdp': 4, 'tensor': 1} needs 8 devices, but 4 are available; set "
                  "--config.mesh.data/fsdp/tensor (one may be -1)")


def test_libtpu_missing_says_how_to_install_it():
  # `import libtpu` fails as it does where the package is not installed.
  line = one_line(run_aot("--config=configs/mlm.py:runlocal", "--topology=v5e:2x2",
                          prelude="import sys; sys.modules['libtpu'] = None"))
  assert line == ("error: --topology needs libtpu, XLA's TPU compiler (no TPU needed): pip "
                  "install -e '.[tpu-aot]' (or pip install libtpu==0.0.42.1)")


# ---------------------------------------------------------------------------------------------
# Slow: compiled for the slices.
# ---------------------------------------------------------------------------------------------
def config_of(name: str, arg: str, mesh: tuple, **fields):
  """configs/<name>.py:<arg> with mesh (data, fsdp, tensor) and SECTION__KEY=value overrides."""
  config = config_lib.load_config_file(name, arg)
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  for key, value in fields.items():
    section, field = key.split("__")
    config[section][field] = value
  return config


BASE_1_LAYER = {"model__num_layers": 1}
COMPILES = {  # name: (config file, argument, topology, mesh, overrides)
    "mlm_runlocal_v5e_data": ("mlm", "runlocal", "v5e:2x2", (4, 1, 1), {}),
    "mlm_base_v5e_data": ("mlm", "size=base", "v5e:2x2", (4, 1, 1),
                          {**BASE_1_LAYER, "train__batch_size": 16}),
    "mlm_base_v5e_fsdp": ("mlm", "size=base", "v5e:2x2", (1, 4, 1),
                          {**BASE_1_LAYER, "train__batch_size": 16}),
    "clm_runlocal_v5p_fsdp_tensor": ("clm", "runlocal", "v5p:2x2x4", (1, 8, 2), {}),
    "clm_base_v5p_data_fsdp_tensor": ("clm", "size=base", "v5p:2x2x4", (2, 4, 2),
                                      {**BASE_1_LAYER, "train__batch_size": 8}),
}


@pytest.fixture(scope="module")
def compiled():
  """Every COMPILES entry's `tpu.estimate` (train step), compiled once for the module."""
  out = {}
  with pytest.MonkeyPatch.context() as mp:
    for name in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
      mp.setenv(name, "")
      mp.delenv(name)
    for key, (file, arg, topology, mesh, fields) in COMPILES.items():
      out[key] = tpu.estimate(config_of(file, arg, mesh, **fields), tpu.parse_topology(topology),
                              ["train"])
  return out


@pytest.mark.slow
def test_each_objective_compiles_on_each_slice_and_mesh(compiled):
  for key, (file, arg, topology, mesh, _) in COMPILES.items():
    out, train = compiled[key], compiled[key]["steps"]["train"]
    assert (out["topology"], out["mesh"]) == (topology, dict(zip(("data", "fsdp", "tensor"),
                                                                 mesh))), key
    assert train["fits"] and 0 < train["total"] < out["hbm_bytes"], key
    # XLA's arguments are the state and batch shards: the state's shards at least.
    assert train["argument"] >= train["params"] + train["optimizer"], key
    assert train["xla_flops"] > 0 and train["step_seconds"] > 0 and 0 < train["mfu"] < 1, key


@pytest.mark.slow
def test_fsdp_divides_the_compiled_state(compiled):
  """At BERT-base width, data=4 replicates the state and fsdp=4 splits it: the state's shards
  and XLA's compiled arguments (state + this device's batch rows, the same 4 rows in both) fall
  by 4, within 10% (small vectors without an 'embed' axis stay whole; TPU layouts pad a few)."""
  data = compiled["mlm_base_v5e_data"]["steps"]["train"]
  fsdp = compiled["mlm_base_v5e_fsdp"]["steps"]["train"]
  assert data["optimizer"] == pytest.approx(2 * data["params"], abs=64)  # AdamW: 2 moments
  replicated, sharded = data["params"] + data["optimizer"], fsdp["params"] + fsdp["optimizer"]
  assert sharded * 4 == pytest.approx(replicated, rel=0.1)
  batch = data["argument"] - replicated
  assert (fsdp["argument"] - batch) * 4 == pytest.approx(data["argument"] - batch, rel=0.1)


@pytest.mark.slow
def test_flops_agree_with_perfs_formula(compiled):
  """At BERT-base and GPT-2 width, XLA's FLOPs per device are research.perf's model FLOPs
  within 10% (XLA counts the non-matmul work and the optimizer too)."""
  for key in ("mlm_base_v5e_data", "clm_base_v5p_data_fsdp_tensor"):
    train = compiled[key]["steps"]["train"]
    assert train["xla_flops"] == pytest.approx(train["model_flops"], rel=0.1), key


@pytest.mark.slow
def test_too_large_config_is_reported_in_one_line():
  """A 2-layer encoder 8192 wide (1.8B parameters: 20.3 GiB of float32 weights and AdamW
  moments) replicated on 16 GiB v5e chips: one line with XLA's numbers and the levers, exit code
  1."""
  proc = run_aot("--config=configs/mlm.py:runlocal", "--topology=v5e:2x2",
                 "--config.model.hidden_size=8192", "--config.model.mlp_dim=32768")
  line = one_line(proc, code=1)
  assert line.startswith("error: does not fit: the train step on v5e:2x2 (TPU v5e): XLA: "), line
  assert line.endswith(" exceeds available HBM (15.75G); params + optimizer 20.30 GiB per device; "
                       "try more fsdp (--config.mesh.fsdp=-1 --config.mesh.data=1: the parameters "
                       "and optimizer state, 20.30 GiB per device now, split over the devices); "
                       "or --config.model.remat=full (or dots): keep fewer activations for the "
                       "backward pass; or a smaller batch per step (--config.train.batch_size, "
                       "now 32) or --config.train.grad_accum_steps=2 (now 1)"), line


# ---------------------------------------------------------------------------------------------
# Generation's decode step.
# ---------------------------------------------------------------------------------------------
def test_decode_step_needs_a_decoder(libtpu_env):
  with pytest.raises(UserError) as e:
    tpu.estimate(config_of("mlm", "runlocal", (4, 1, 1)), tpu.parse_topology("v5e:2x2"),
                 ["decode"])
  assert str(e.value) == ("--step=decode: generation needs a decoder with a causal-LM head; this "
                          "model is an encoder with heads ['mlm']")


@pytest.mark.slow
def test_decode_step_compiles_with_its_cache(libtpu_env):
  """The runlocal decoder's one-token step for 32 rows against a 128-slot cache, fsdp=4 on a
  v5e 2x2: params sharded as training shards them, the cache split by rows (8 per chip): 2
  layers x (key, value) x 8 rows x 128 slots x 2 heads x 64 x 4 bytes (float32 compute) = 2 MiB,
  both inside XLA's arguments; the step time is one generated token per row."""
  from research import memory  # pylint: disable=g-import-not-at-top
  from research.run_shape import shape_config  # pylint: disable=g-import-not-at-top
  config = config_of("clm", "runlocal", (1, 4, 1))
  out = tpu.estimate(config, tpu.parse_topology("v5e:2x2"), ["decode"])
  decode = out["steps"]["decode"]
  assert decode["cache"] == 2 * 2 * 8 * 128 * 2 * 64 * 4
  mesh = tpu.topology_mesh(config, tpu.parse_topology("v5e:2x2"),
                           tpu.tpu_devices(tpu.parse_topology("v5e:2x2")))
  train_params = memory.shard_bytes(memory.abstract_step(shape_config(config)[0],
                                                         mesh).state.params)
  assert decode["params"] == train_params
  assert decode["fits"] and decode["argument"] >= decode["params"] + decode["cache"]
  assert decode["tokens_per_sec"] == pytest.approx(32 / decode["step_seconds"])
  assert decode["xla_flops"] > 0 and decode["rows"] == 32 and decode["cache_length"] == 128
  lines = tpu.report(out)
  assert ("decode step (32 rows, one new token each, a cache of 128 slots), per device: params "
          f"{tpu.gib(decode['params'])}, cache 2.0 MiB") in lines
