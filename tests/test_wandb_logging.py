"""Weights & Biases logging (research/wandb_logging.py), in offline mode only: what the offline run
files hold is read back with wandb's own record format (its protobuf `Record`s in the .wandb
file's log framing) and compared with metrics.jsonl, summary.json and config.json."""
import glob
import hashlib
import json
import os
import struct

import ml_collections
import pytest

from conftest import REPO, require_for_module, run_cli, wandb_offline_env
from test_cli_errors import _fails_with
from research import checkpoint, config_lib, tracking, wandb_logging
from research.errors import Preempted

wandb = require_for_module("wandb", "W&B logging is tested offline: pip install -e '.[test]'")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
  """W&B offline, silent, its files under tmp_path (no network, nothing in $HOME); its service
  process ends with the test (the next test starts its own, with its own folders)."""
  env = wandb_offline_env(str(tmp_path / "wandb_home"))
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  yield env
  wandb.teardown()


# ---------------------------------------------------------------------------------------------
# Reading an offline run back: the .wandb file is a log of 32 KiB blocks after a 7-byte header
# (':W&B', magic 0xBEE1, version); each chunk is (crc32, length, type: 1 whole, 2 first,
# 3 middle, 4 last) + bytes, and the chunks of a record join into a protobuf `Record`.
# ---------------------------------------------------------------------------------------------
def _records(path):
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  ident, magic, version = struct.unpack("<4sHB", data[:7])
  assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), path
  pos, block, pending = 7, 32768, b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0:  # padding to the end of the block
      pos += block - pos % block
      continue
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b""
      yield record


def _key(item):
  return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir):
  """{config, history (records with 'step'), summary, exit_code, preempting, dir} of one offline
  run directory; W&B's own keys (starting with '_') left out."""
  out = {"config": {}, "history": [], "summary": {}, "exit_code": None, "preempting": False,
         "dir": run_dir}
  (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
  for record in _records(path):
    kind = record.WhichOneof("record_type")
    if kind in ("run", "config"):
      updates = record.run.config.update if kind == "run" else record.config.update
      out["config"].update({_key(u): json.loads(u.value_json) for u in updates})
    elif kind == "history":
      row = {_key(i): json.loads(i.value_json) for i in record.history.item}
      out["history"].append({"step": record.history.step.num,
                             **{k: v for k, v in row.items() if not k.startswith("_")}})
    elif kind == "summary":
      out["summary"].update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    elif kind == "exit":
      out["exit_code"] = record.exit.exit_code
    elif kind == "preempting":
      out["preempting"] = True
  out["config"] = {k: v for k, v in out["config"].items() if not k.startswith("_")}
  out["summary"] = {k: v for k, v in out["summary"].items() if not k.startswith("_")}
  return out


def offline_runs(directory):
  """The offline runs under `directory`/wandb, oldest first. `run.finish()` returns before W&B's
  service has written the run's last records; `wandb.teardown()` (what the atexit hook of a
  command-line run does) waits for them."""
  wandb.teardown()
  return [read_offline_run(d) for d in sorted(glob.glob(os.path.join(directory, "wandb",
                                                                     "offline-run-*")))]


def without_nulls(records):
  return [{k: v for k, v in r.items() if v is not None} for r in records]


def wandb_config(directory="", mode="offline"):
  config = ml_collections.ConfigDict({"optim": {"learning_rate": 0.01},
                                      "logging": {"wandb": wandb_logging.section()}})
  config.logging.wandb.update(mode=mode, project="p", dir=directory)
  return config


# ---------------------------------------------------------------------------------------------
# The tracker's W&B run: each step once across a resume; off by default.
# ---------------------------------------------------------------------------------------------
def test_a_resumed_run_continues_the_wandb_run_and_logs_no_step_twice(tmp_path):
  workdir, first, second = str(tmp_path / "w"), str(tmp_path / "first"), str(tmp_path / "second")
  os.makedirs(workdir)
  tracker = tracking.Tracker(workdir, start_step=0, total_steps=4, tensorboard=False,
                             progress=False, config=wandb_config(first))
  for step in (1, 2, 3):
    tracker.write(step, {"train/loss": 1.0 / step, "eval/t/accuracy": None})
  tracker.close(Preempted("preempted", 3))
  # Resumed from the checkpoint of step 2: step 3 again (as a resumed run recomputes it), then 4.
  tracker = tracking.Tracker(workdir, start_step=2, total_steps=4, tensorboard=False,
                             progress=False, config=wandb_config(second))
  tracker.write(3, {"train/loss": 1.0 / 3})
  tracker.write(4, {"train/loss": 0.25, "eval/t/accuracy": 0.5})
  tracker.finish({"step": 4, "eval/t/accuracy": 0.5, "init": "scratch"})

  (before,), (after,) = offline_runs(first), offline_runs(second)
  run_id = json.load(open(os.path.join(workdir, wandb_logging.RUN_FILE)))["id"]
  assert [os.path.basename(r["dir"]).endswith(f"-{run_id}") for r in (before, after)] == [True] * 2
  assert (before["exit_code"], before["preempting"]) == (3, True)
  assert (after["exit_code"], after["preempting"]) == (0, False)
  assert before["history"] + after["history"] == without_nulls(tracking.read_metrics(workdir))
  assert [r["step"] for r in before["history"] + after["history"]] == [1, 2, 3, 4]
  assert after["summary"]["init"] == "scratch" and after["summary"]["eval/t/accuracy"] == 0.5
  assert after["config"]["optim.learning_rate"] == 0.01
  assert after["config"]["logging.wandb.dir"] == second


def test_wandb_turned_on_when_a_run_resumes_logs_the_kept_history_first(tmp_path):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  tracker = tracking.Tracker(workdir, start_step=0, total_steps=3, tensorboard=False,
                             progress=False, config=wandb_config(mode="disabled"))
  for step in (1, 2, 3):
    tracker.write(step, {"train/loss": 1.0 / step})
  tracker.close()
  assert not os.path.exists(os.path.join(workdir, wandb_logging.RUN_FILE))
  tracker = tracking.Tracker(workdir, start_step=2, total_steps=3, tensorboard=False,
                             progress=False, config=wandb_config())
  tracker.write(3, {"train/loss": 0.5})
  tracker.finish({"step": 3})
  (run,) = offline_runs(workdir)
  assert run["history"] == [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5},
                            {"step": 3, "train/loss": 0.5}] == tracking.read_metrics(workdir)


@pytest.mark.parametrize("name", ["mlm", "clm", "finetune", "continual"])
def test_every_config_has_wandb_off_and_a_default_run_writes_nothing(tmp_path, offline, name):
  config = config_lib.load_config_file(name, "runlocal")
  assert config.logging.wandb.to_dict() == wandb_logging.section().to_dict()
  assert config.logging.wandb.mode == "disabled"
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  tracker = tracking.Tracker(workdir, start_step=0, total_steps=1, tensorboard=False,
                             progress=False, config=config)
  tracker.write(1, {"train/loss": 1.0})
  tracker.finish({"step": 1})
  assert sorted(os.listdir(workdir)) == sorted([tracking.METRICS_FILE, tracking.SUMMARY_FILE,
                                                tracking.SUMMARIES_FILE, tracking.PLOT_FILE])
  assert not os.path.exists(offline["WANDB_DIR"])


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------
def test_wandb_mode_without_the_package_is_one_line(tmp_path):
  stub = tmp_path / "no_wandb" / "wandb"  # an installed-looking `wandb` that cannot be imported
  stub.mkdir(parents=True)
  (stub / "__init__.py").write_text("raise ImportError('No module named wandb')\n")
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w",
                 "--config.logging.wandb.mode=offline",
                 env={"PYTHONPATH": os.pathsep.join([str(stub.parent), REPO])})
  _fails_with(proc, "logging.wandb.mode='offline' needs the wandb package", "pip install wandb",
              '.[wandb]')
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_offline_run_through_the_cli_holds_config_metrics_summary_and_plot(finetune_lr_pair):
  workdirs, env = finetune_lr_pair
  # Each run's W&B files are in its workdir (W&B's own logs go to WANDB_CACHE_DIR).
  assert not glob.glob(os.path.join(env["WANDB_DIR"], "**", "offline-run-*"), recursive=True)
  for workdir in workdirs:
    (run,) = offline_runs(workdir)
    assert run["exit_code"] == 0
    with open(os.path.join(workdir, "config.json")) as f:
      config = checkpoint.flat_config(json.load(f))
    assert run["config"] == config
    assert run["config"]["logging.wandb.project"] == "p"
    assert run["history"] == without_nulls(tracking.read_metrics(workdir))
    with open(os.path.join(workdir, tracking.SUMMARY_FILE)) as f:
      summary = json.load(f)
    image = run["summary"].pop(wandb_logging.PLOT_KEY)
    assert {k: run["summary"][k] for k in summary if summary[k] is not None} == \
        {k: v for k, v in summary.items() if v is not None}
    with open(os.path.join(workdir, tracking.PLOT_FILE), "rb") as f:
      assert image["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert os.path.exists(os.path.join(run["dir"], "files", image["path"]))
