"""Damaged checkpoints and failed saves, through the command line (CPU).

A damaged checkpoint (truncated array file, deleted file, garbage metadata) is named in one line,
moved to WORKDIR/checkpoints.damaged/ and the one before it used: the resumed run ends where an
uninterrupted one does. A save that cannot be written (here: a file-size limit, EFBIG, as a full
disk gives ENOSPC) ends the run with one line and exit code 5, the earlier checkpoints intact.
"""
import glob
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli
from research import checkpoint, tracking
from research import params as params_lib
from research.errors import EXIT_SAVE_FAILED

FLAGS = ["--config=configs/mlm.py:runlocal", "--config.train.steps=40",
         "--config.train.batch_size=8", "--config.data.vocab_size=1024",
         "--config.data.seq_len=32", "--config.evals.every_steps=40", "--config.evals.batches=1",
         "--config.ckpt.every_steps=10", "--config.ckpt.keep=4", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A 40-step run with checkpoints 10, 20, 30, 40, made once; tests work on copies."""
  workdir = str(tmp_path_factory.mktemp("faults") / "reference")
  done = run_cli(*FLAGS, f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def _copy(finished, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished, workdir)
  return workdir


def _params(workdir, step):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  return params_lib.flatten(ckpt.restore_raw_state(step)["params"])


def test_the_parameters_alone_are_read_as_the_whole_state_holds_them(finished):
  """`restore_saved_params` (what predict, init.weights and the converters read) reads only the
  parameters of a checkpoint: the same arrays, dtypes and shardings as the whole state's."""
  ckpt = checkpoint.Checkpointer(os.path.join(finished, "checkpoints"), use_async=False)
  for step in ckpt.manager.all_steps():
    whole = params_lib.flatten(ckpt.restore_raw_state(step)["params"])
    alone = params_lib.flatten(ckpt.restore_saved_params(step))
    assert sorted(alone) == sorted(whole)
    for path, value in whole.items():
      assert (alone[path].dtype, alone[path].sharding) == (value.dtype, value.sharding), path
      np.testing.assert_array_equal(alone[path], value, err_msg=f"step {step} {path}")


def _largest_array_file(workdir, step):
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.*", "d", "*"))
  return max(files, key=os.path.getsize)


def _warnings(stderr):
  return [l for l in stderr.splitlines() if "research.checkpoint" in l]


def test_damaged_checkpoints_are_moved_aside_and_the_run_resumes_from_the_last_valid(
    finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  with open(os.path.join(workdir, "checkpoints", "40", "state", "_METADATA"), "w") as f:
    f.write("{garbage")  # garbage metadata
  os.remove(_largest_array_file(workdir, 30))  # a deleted file
  with open(_largest_array_file(workdir, 20), "r+b") as f:  # a truncated array file
    f.truncate(100)

  resumed = run_cli(*FLAGS, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Traceback" not in resumed.stderr and "Event loop" not in resumed.stderr, resumed.stderr[-6000:]
  lines = _warnings(resumed.stderr)
  assert [l.split("checkpoint ")[1].split(" ")[0] for l in lines] == ["40", "30", "20"], lines
  assert "JSONDecodeError" in lines[0] and "_METADATA" not in lines[1]
  assert "Error reading" in lines[1] and "Requested byte range" in lines[2], lines
  assert "resumed from step 10" in resumed.stderr
  moved = sorted(os.listdir(os.path.join(workdir, "checkpoints.damaged")))
  assert [m.split("-")[0] for m in moved] == ["20", "30", "40"]  # kept, not deleted
  assert os.path.exists(os.path.join(workdir, "checkpoints.damaged", moved[2], "state",
                                     "_METADATA"))

  # Steps 11-40 again, exactly as the uninterrupted run made them.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["10", "20", "30",
                                                                                "40"]
  expected, got = _params(finished, 40), _params(workdir, 40)
  assert all(np.array_equal(expected[k], got[k]) for k in expected)
  losses = lambda w: [r["train/loss"] for r in tracking.read_metrics(w)]
  assert losses(workdir) == losses(finished)


@pytest.mark.slow
def test_when_every_checkpoint_is_damaged_the_run_stops_naming_what_it_moved(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  for step in (10, 20, 30, 40):
    os.remove(os.path.join(workdir, "checkpoints", str(step), "data", "metadata"))
  proc = run_cli(*FLAGS, f"--workdir={workdir}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: no checkpoint in") and "can be restored" in line, line
  for step in (10, 20, 30, 40):
    assert f"{step} -> {workdir}/checkpoints.damaged/{step}-" in line, line
  assert "Rerun the same command to start this run afresh" in line
  assert len(os.listdir(os.path.join(workdir, "checkpoints.damaged"))) == 4


def test_another_runs_damaged_checkpoint_is_skipped_not_moved(finished, tmp_path, caplog):
  """What init.weights, research.predict and research.convert read (`workdir_params`): the
  newest checkpoint whose parameters restore; a damaged one is named in a warning and left in
  place. (They read the parameters alone: every array file is truncated, so that the damage
  reaches them wherever orbax put them.)"""
  workdir = _copy(finished, tmp_path)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "40", "state", "ocdbt.*", "d", "*")):
    with open(path, "r+b") as f:
      f.truncate(100)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  got = params_lib.flatten(checkpoint.workdir_params(workdir))
  expected = _params(finished, 30)
  assert all(np.array_equal(expected[k], got[k]) for k in expected)
  assert f"checkpoint 40 in {workdir}/checkpoints is damaged" in caplog.text
  assert "Requested byte range" in caplog.text and "skipped; trying the one before" in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "checkpoints.damaged"))


def _file_size_limit(limit):
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


@pytest.mark.slow
def test_a_save_that_cannot_be_written_stops_the_run_in_one_line(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  # Resume to step 60 where no file over 1 MiB may be written: the arrays of checkpoint 50 fail.
  assert os.path.getsize(_largest_array_file(workdir, 40)) > 2**20
  proc = subprocess.run([sys.executable, "-m", "research.main", *FLAGS, f"--workdir={workdir}",
                         "--config.train.steps=60"], cwd=REPO, capture_output=True, text=True,
                        timeout=600, preexec_fn=_file_size_limit(2**20))
  assert proc.returncode == EXIT_SAVE_FAILED == 5, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr and "Event loop" not in proc.stderr, proc.stderr[-3000:]
  assert [l for l in lines if not l[:2].isdigit()] == [lines[-1]], lines  # log lines + one error
  assert lines[-1].startswith("error: checkpoint 50 could not be written"), lines[-1]
  assert "File too large" in lines[-1] and "the last intact checkpoint is step 40" in lines[-1]
  names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert names == ["10", "20", "30", "40", "50.orbax-checkpoint-tmp"], names

  # Space again: the rerun notes and removes the unfinished save, resumes from 40 and finishes.
  rerun = run_cli(*FLAGS, f"--workdir={workdir}", "--config.train.steps=60")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "removing 1 unfinished save(s)" in rerun.stderr
  assert "50.orbax-checkpoint-tmp" in rerun.stderr
  assert "resumed from step 40" in rerun.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["30", "40", "50",
                                                                                "60"]
  assert [r["step"] for r in tracking.read_metrics(workdir)] == list(range(1, 61))


def test_a_long_save_error_keeps_the_operating_systems_reason():
  """tensorstore names whole paths: a long message is cut in the middle, but the reason it
  carries (here after a long path and before a long tail) stays in the one line."""
  from research.checkpoint import one_line  # pylint: disable=g-import-not-at-top
  message = ('OUT_OF_RANGE: Error writing "params" in local file "' + "/deep" * 60 +
             "\": Failed to write 9 bytes to file 6: File too large [os_error_code='27'] " +
             "[source locations='" + "tensorstore/kvstore/file.cc:1 " * 8 + "']")
  try:
    raise RuntimeError("save failed") from ValueError(message)
  except RuntimeError as e:
    line = one_line(e)
  assert line.startswith("ValueError: OUT_OF_RANGE: Error writing") and len(line) < 340
  assert "File too large" in line and "\n" not in line


def test_the_operating_system_s_reason_survives_an_error_raised_while_handling_it():
  """A save in a background thread can fail with an error raised while handling the OS error
  (its `__context__`, not its `__cause__`): the line still says why ('File too large')."""
  try:
    try:
      raise OSError(27, "File too large")
    except OSError:
      # pylint: disable-next=raise-missing-from
      raise RuntimeError("the checkpoint's arrays were not written")
  except RuntimeError as e:
    line = checkpoint.one_line(e)
  assert line == "RuntimeError: the checkpoint's arrays were not written (File too large)"
