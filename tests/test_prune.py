"""Pruning (research/compress): the cubic sparsity schedule, masks kept through updates and a
resume, structured head/neuron pruning (the shrunk model computes what the zero-masked one does),
and `python -m research.compress --method=prune` with its refusals."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, run_cli
from test_cli_errors import _fails_with
from test_lora import TINY, _init
from research import checkpoint, models
from research import params as params_lib
from research.compress import magnitude, structured
from research.compress import output
from research.train.step import TrainState


def test_cubic_schedule_equals_its_formula():
  cfg = magnitude.PruneConfig(sparsity=0.8, start_step=10, end_step=50, interval=15)
  for t in range(0, 61):
    if t < 10:
      want = 0.0
    elif t > 50:
      want = 0.8
    else:
      want = 0.8 + (0.0 - 0.8) * (1 - (t - 10) / (50 - 10)) ** 3  # Zhu & Gupta's s_t, s_i = 0
    assert float(magnitude.scheduled_sparsity(t, cfg)) == pytest.approx(want, abs=1e-6), t
  due = [t for t in range(61) if bool(magnitude.mask_update_due(t, cfg))]
  assert due == [10, 25, 40, 50]
  at_once = magnitude.PruneConfig(sparsity=0.5, start_step=3, end_step=3)
  assert [float(magnitude.scheduled_sparsity(t, at_once)) for t in (2, 3, 4)] == [0.0, 0.5, 0.5]


def _tiny_params(seed=0):
  return nn.unbox(_init(models.ModelConfig(**TINY), seed)[0])  # as the train state holds them


def _targets(params, cfg):
  return {p: np.asarray(v) for p, v in params_lib.flatten(params).items() if cfg.is_target(p)}


def _make_update(tx):
  @jax.jit
  def update(params, opt_state, step):
    grads = jax.tree.map(lambda w: jnp.sin(1e3 * w + step), params)  # cheap, varies per step
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return update


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_masks_stay_applied_after_updates(scope):
  cfg = magnitude.PruneConfig(sparsity=0.6, scope=scope, start_step=1, end_step=3, interval=1)
  tx = magnitude.pruning(optax.adamw(1e-2), cfg)
  params = _tiny_params()
  opt_state = tx.init(params)
  update = _make_update(tx)
  pruned_at = {}
  for step in range(8):
    params, opt_state = update(params, opt_state, step)
    weights, masks = _targets(params, cfg), params_lib.flatten(opt_state.masks)
    want = float(magnitude.scheduled_sparsity(step, cfg))
    for path, w in weights.items():  # pruned weights are exactly 0, kept ones moved
      assert np.all(w[~np.asarray(masks[path])] == 0), (step, path)
      assert np.all(w[np.asarray(masks[path])] != 0), (step, path)
    sizes = {p: w.size for p, w in weights.items()}
    zeros = {p: int((w == 0).sum()) for p, w in weights.items()}
    if scope == "global":
      assert sum(zeros.values()) == int(np.floor(want * sum(sizes.values()))), step
    else:
      assert zeros == {p: int(np.floor(want * n)) for p, n in sizes.items()}, step
    if step >= 3:  # after the ramp: the same weights, and only they, stay 0
      pruned_at.setdefault("end", {p: w == 0 for p, w in weights.items()})
      for p, w in weights.items():
        np.testing.assert_array_equal(w == 0, pruned_at["end"][p])
  assert magnitude.sparsity(params, cfg) == pytest.approx(
      sum(int(np.floor(0.6 * n)) for n in sizes.values()) / sum(sizes.values())
      if scope == "per_layer" else int(np.floor(0.6 * sum(sizes.values()))) / sum(sizes.values()))
  others = {p: v for p, v in params_lib.flatten(params).items() if not cfg.is_target(p)}
  assert others and all(np.count_nonzero(v) > 0.9 * v.size for v in others.values()
                        if not p.endswith("bias"))


def test_resume_restores_masks_bit_exactly(tmp_path):
  cfg = magnitude.PruneConfig(sparsity=0.5, start_step=0, end_step=4, interval=2)
  tx = magnitude.pruning(optax.adamw(1e-2), cfg)
  update = _make_update(tx)

  def steps(state, first, last):
    params, opt_state = state.params, state.opt_state
    for step in range(first, last):
      params, opt_state = update(params, opt_state, step)
    return TrainState(jnp.asarray(last, jnp.int32), params, opt_state, state.health)

  params = _tiny_params()
  fresh = TrainState.create(params, tx.init(params))
  uninterrupted = steps(fresh, 0, 6)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), use_async=False)
  ckpt.save(3, steps(fresh, 0, 3), {"next_step": 3}, {})
  restored, _, _ = ckpt.restore(3, jax.eval_shape(lambda: fresh))
  resumed = steps(restored, 3, 6)
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert magnitude.sparsity(resumed.params, cfg) > 0.49


# ---------------------------------------------------------------------------------------------
# Structured pruning.
# ---------------------------------------------------------------------------------------------
def _apply(cfg, params, ids):
  out = models.build(cfg).apply({"params": params}, ids)
  return np.asarray(out["hidden"]), np.asarray(out["classification_logits"])


def _perturbed(cfg, seed=0):
  """Random parameters with non-zero biases (so dropping a unit's bias matters)."""
  params, ids = _init(cfg, seed)
  rng = np.random.default_rng(seed)
  flat = {p: np.asarray(v) + (rng.normal(0, 0.1, v.shape).astype(np.float32)
                              if p.endswith("bias") else 0) for p, v in params_lib.flatten(params).items()}
  return params_lib.unflatten(flat), ids


@pytest.mark.parametrize("scan_layers", [False, True])
def test_shrunk_model_equals_the_masked_model(scan_layers):
  cfg = models.ModelConfig(**TINY, scan_layers=scan_layers)
  params, ids = _perturbed(cfg)
  # Head 2 of every block gets the largest output rows, head 0 none: 2 is kept, 0 removed.
  flat = params_lib.flatten(params)
  for p in flat:
    if p.endswith("attention/out/kernel"):
      heads_axis = 1 if scan_layers else 0
      index = [slice(None)] * flat[p].ndim
      index[heads_axis] = 2
      flat[p][tuple(index)] *= 10
      index[heads_axis] = 0
      flat[p][tuple(index)] *= 1e-3
  params = params_lib.unflatten(flat)
  kept = structured.kept_units(params, cfg, 2, 24)
  assert all(2 in heads and 0 not in heads and len(heads) == 2 and len(neurons) == 40
             for heads, neurons in kept)
  shrunk, small = structured.prune(params, cfg, 2, 24)
  assert (small.num_heads, small.head_dim, small.mlp_dim) == (2, 8, 40)
  masked = structured.zero_pruned(params, cfg, kept)
  hidden, logits = _apply(small, shrunk, ids)
  masked_hidden, masked_logits = _apply(cfg, masked, ids)
  np.testing.assert_allclose(hidden, masked_hidden, atol=1e-5)
  np.testing.assert_allclose(logits, masked_logits, atol=1e-5)
  assert np.abs(masked_hidden - _apply(cfg, params, ids)[0]).max() > 1e-3  # it pruned something
  count = lambda tree: sum(v.size for v in params_lib.flatten(tree).values())
  block = 3 * 32 * 2 * 8 + 3 * 2 * 8 + 2 * 8 * 32 + 2 * 32 * 24 + 24  # removed per block
  assert count(params) - count(shrunk) == cfg.num_layers * block


def test_grouped_query_attention_is_refused():
  cfg = models.ModelConfig(**{**TINY, "num_kv_heads": 2})
  with pytest.raises(Exception, match="grouped-query attention"):
    structured.prune(_init(cfg)[0], cfg, 1, 0)


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------
def compress_cli(*args):
  return subprocess.run([sys.executable, "-m", "research.compress", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def _dir_bytes(root):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir holding the tiny classifier's parameters, as a run writes it."""
  root = tmp_path_factory.mktemp("prune")
  cfg = models.ModelConfig(**TINY)
  params, _ = _perturbed(cfg)
  model = dataclasses.asdict(cfg)
  del model["peft"]
  output.write(str(root / "w"), str(root), params, {"model": model})
  return root


def test_structured_cli_writes_a_smaller_workdir(trained):
  out = trained / "small"
  proc = compress_cli(f"--workdir={trained}/w", "--method=prune", "--prune_heads=0.5",
                      "--prune_neurons=16", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.load(open(out / "config.json"))
  assert (saved["model"]["num_heads"], saved["model"]["attention_head_dim"],
          saved["model"]["mlp_dim"]) == (2, 8, 48)
  full, small = (params_lib.flatten(checkpoint.workdir_params(str(d)))
                 for d in (trained / "w", out))
  assert sum(v.size for v in small.values()) < sum(v.size for v in full.values())
  assert _dir_bytes(out / "checkpoints") < _dir_bytes(trained / "w" / "checkpoints")
  assert "parameters" in proc.stdout and "-> " in proc.stdout
  # transformers' BERT cannot hold 2 heads of 8 in a width of 32: one line.
  proc = subprocess.run([sys.executable, "-m", "research.convert", f"--from={out}",
                         f"--to_hf={trained}/small_hf"], cwd=REPO, capture_output=True, text=True)
  _fails_with(proc, "needs num_heads x head_dim = hidden_size", "2 x 8 != 32")


def test_one_shot_cli_reaches_the_sparsity(trained):
  out = trained / "sparse"
  proc = compress_cli(f"--workdir={trained}/w", "--method=prune", "--prune_sparsity=0.5",
                      f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  cfg = magnitude.PruneConfig(sparsity=0.5)
  weights = _targets(checkpoint.workdir_params(str(out)), cfg)
  n = sum(w.size for w in weights.values())
  assert sum(int((w == 0).sum()) for w in weights.values()) == n // 2


@pytest.mark.parametrize("flag,message", [
    ("--prune_heads=4", "--prune_heads=4.0 removes 4 of the 4 heads of each layer"),
    ("--prune_heads=0.9", "--prune_heads=0.9 removes 4 of the 4 heads"),
    ("--prune_neurons=64", "removes 64 of the 64 feed-forward neurons"),
    ("--prune_sparsity=1", "--prune_sparsity must be in [0, 1), got 1.0"),
])
def test_cli_refusals(trained, flag, message):
  out = trained / "refused"
  proc = compress_cli(f"--workdir={trained}/w", "--method=prune", flag, f"--out={out}")
  _fails_with(proc, message)
  assert not os.path.exists(out)


def test_main_refuses_a_sparsity_outside_0_1(tmp_path):
  proc = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal", f"--workdir={tmp_path}/w",
                 "--config.prune.sparsity=1.5")
  _fails_with(proc, "prune.sparsity must be in [0, 1), got 1.5")
  assert not os.path.exists(tmp_path / "w")


RUN = ["--config=configs/finetune.py:task=bbc_news,runlocal", "--config.train.steps=8",
       "--config.train.batch_size=8", "--config.data.vocab_size=1024", "--config.data.seq_len=32",
       "--config.evals.every_steps=8", "--config.ckpt.every_steps=2", "--config.logging.progress=False",
       "--config.logging.tensorboard=False", "--config.prune.sparsity=0.5",
       "--config.prune.start_step=1", "--config.prune.end_step=6", "--config.prune.interval=1"]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
  """kill -9 after the step-4 checkpoint, rerun the command: the same parameters and masks, bit
  for bit, and the summary's real sparsity."""
  from test_resume import start, wait_for  # pylint: disable=g-import-not-at-top
  reference = str(tmp_path / "reference")
  done = run_cli(*RUN, f"--workdir={reference}")
  assert done.returncode == 0, done.stderr[-2000:]
  workdir = str(tmp_path / "killed")
  proc = start(workdir, RUN)
  wait_for(proc, lambda: os.path.exists(os.path.join(workdir, "checkpoints", "4")))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  again = run_cli(*RUN, f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-2000:]
  states = []
  for w in (reference, workdir):
    ckpt = checkpoint.Checkpointer(os.path.join(w, "checkpoints"), use_async=False)
    states.append(ckpt.restore_raw_state(8))
  (ref_params, ref_opt), (params, opt) = ((s["params"], s["opt_state"]) for s in states)
  for a, b in zip(jax.tree.leaves((ref_params, ref_opt)), jax.tree.leaves((params, opt))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  cfg = magnitude.PruneConfig(sparsity=0.5)
  weights = _targets(params, cfg)
  n = sum(w.size for w in weights.values())
  assert sum(int((w == 0).sum()) for w in weights.values()) == n // 2
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["prune/sparsity"] == (n // 2) / n
