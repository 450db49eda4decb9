"""AdaLoRA (research/peft/adalora.py): the SVD-form update, its budget schedule and pruning, the
orthogonality regulariser, the rank report, merge, and a run through the CLI."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_cli, tiny_config
from test_cli_errors import _fails_with
from test_lora import TINY, _apply, _init, _with_base
from research import features, models
from research import params as params_lib
from research.peft import adalora, lora
from research.peft.config import PeftConfig
from research.train import optim


@pytest.mark.parametrize("scan_layers", [False, True])
def test_step_zero_is_the_base_model_and_merge_matches(scan_layers):
  base_cfg = models.ModelConfig(**TINY, scan_layers=scan_layers)
  peft = PeftConfig(method="adalora", init_rank=4, rank=2, alpha=8.0)
  cfg = dataclasses.replace(base_cfg, peft=peft)
  base, ids = _init(base_cfg)
  flat = params_lib.flatten(_with_base(_init(cfg, seed=1)[0], base))
  stack, lead = ("layers", (2,)) if scan_layers else ("layer_0", ())
  module = f"backbone/{stack}/attention/query"
  assert {p: v.shape for p, v in flat.items() if p.startswith(module + "/lora")} == {
      f"{module}/lora_a": lead + (32, 4), f"{module}/lora_e": lead + (4,),
      f"{module}/lora_b": lead + (4, 4, 8)}
  assert not any("/key/" in p or "/mlp/" in p for p in flat if "lora" in p)
  np.testing.assert_array_equal(_apply(cfg, params_lib.unflatten(flat), ids),
                                _apply(base_cfg, base, ids))
  # Trained factors and singular values (one of them pruned): the output moves, and the merged
  # base model computes the same function.
  rng = np.random.default_rng(0)
  for p, v in flat.items():
    if "/lora_" in p:
      flat[p] = rng.normal(0, 0.5, v.shape).astype(np.float32)
    if p.endswith("lora_e"):
      flat[p] *= np.array([1, 0, 1, 1], np.float32)
  trained = params_lib.unflatten(flat)
  out = _apply(cfg, trained, ids)
  assert np.abs(out - _apply(base_cfg, base, ids)).max() > 1e-2
  merged, adapters = lora.merge(trained, peft)
  assert set(params_lib.flatten(merged)) == set(params_lib.flatten(base))
  np.testing.assert_allclose(_apply(base_cfg, merged, ids), out, atol=1e-5)
  restored = params_lib.flatten(lora.unmerge(merged, adapters, peft))
  for path, value in flat.items():
    np.testing.assert_allclose(restored[path], value, atol=1e-6, err_msg=path)
  # The rank report counts non-zero singular values per module, per block when stacked.
  ranks = adalora.ranks(trained)
  assert ranks["backbone/layer_1/attention/value"] == 3 and sum(ranks.values()) == 4 * 3


def _paper_budget(t, init_rank, target_rank, n, t_init, t_final, total):
  """Zhang et al. (2023), eq. (11), floored to an integer as HF PEFT does."""
  b0, bt = init_rank * n, target_rank * n
  if t <= t_init:
    return b0
  if t >= total - t_final:
    return bt
  return int(bt + (b0 - bt) * (1 - (t - t_init) / (total - t_final - t_init)) ** 3)


def test_budget_follows_the_papers_cubic_schedule():
  peft = PeftConfig(method="adalora", init_rank=12, rank=4, adalora_warmup=10, adalora_final=20)
  budget = jax.jit(lambda t: adalora.budget(t, peft, 6, 100))
  steps = [1, 10, 11, 25, 40, 55, 70, 79, 80, 81, 100]
  got = [int(budget(t)) for t in steps]
  assert got == [_paper_budget(t, 12, 4, 6, 10, 20, 100) for t in steps]
  assert got[:2] == [72, 72] and got[-3:] == [24, 24, 24] and 24 < got[3] < 72


def _two_modules(e0):
  return {"m0": {"lora_a": jnp.ones((3, 4)), "lora_e": jnp.asarray(e0[:4]),
                 "lora_b": jnp.ones((4, 3))},
          "m1": {"lora_a": jnp.ones((3, 4)), "lora_e": jnp.asarray(e0[4:]),
                 "lora_b": jnp.ones((4, 3))},
          "head": jnp.ones((2,))}


def test_rank_allocation_prunes_to_the_budget_on_schedule_then_keeps_the_final_mask():
  """2 modules x 4 -> 1 each over 10 updates (warmup 2, final 2, interval 3): masks at 3 (budget
  5), 6 (2) and 8 (2, fixed from then on). Pruned values regrow between masks (plain SGD)."""
  peft = PeftConfig(method="adalora", init_rank=4, rank=1, adalora_warmup=2, adalora_final=2,
                    adalora_interval=3)
  tx = adalora.rank_allocation(optax.sgd(1e-6), peft, total_steps=10)
  e0 = np.array([0.5, -0.9, 0.1, 0.3, 0.8, -0.05, 0.6, 0.2], np.float32)
  params = _two_modules(e0)
  state = tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)
  grads = {**grads, "m0": {**grads["m0"], "lora_e": jnp.ones(4)},
           "m1": {**grads["m1"], "lora_e": jnp.ones(4)}}
  step = jax.jit(tx.update)
  kept = {}
  for t in range(1, 11):
    if t > 8:  # after the schedule: a pruned triplet's P grows important, yet stays pruned
      grads = {**grads, "m0": {**grads["m0"], "lora_a": jnp.zeros((3, 4)).at[:, 2].set(1e3)}}
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    e = np.concatenate([params["m0"]["lora_e"], params["m1"]["lora_e"]])
    kept[t] = set(np.flatnonzero(e))
    assert np.array_equal(params["head"], np.ones(2))
  by_size = list(np.argsort(-np.abs(e0)))
  assert kept[1] == kept[2] == set(range(8))
  assert kept[3] == set(by_size[:5])
  assert kept[4] == kept[5] == set(range(8))  # not a masking step: the pruned ones regrew
  assert kept[6] == kept[8] == kept[9] == kept[10] == set(by_size[:2])
  assert kept[7] == set(range(8))


@pytest.mark.parametrize("lead", [(), (2,)])
def test_triplet_scores_average_over_p_and_q(lead):
  """S_i = s(E_i) + mean_j s(P_ji) + mean_j s(Q_ij), s = I * U, per block when stacked; P
  (in1 x in2 x rank) and Q (rank x out) of different sizes, so a sum would weigh them apart."""
  rng = np.random.default_rng(0)
  shapes = (lead + (3, 2, 4), lead + (4,), lead + (4, 5))  # P, E, Q
  draw = lambda: tuple(rng.uniform(size=s).astype(np.float32) for s in shapes)
  (sp, se, sq), (up, ue, uq) = draw(), draw()
  got = np.asarray(adalora.triplet_scores([(sp, se, sq)], [(up, ue, uq)]))
  expected = []
  for block in np.ndindex(*lead):
    for i in range(4):
      p = [sp[block][a, b, i] * up[block][a, b, i] for a in range(3) for b in range(2)]
      q = [sq[block][i, o] * uq[block][i, o] for o in range(5)]
      expected.append(se[block][i] * ue[block][i] + sum(p) / 6 + sum(q) / 5)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_orthogonality_is_zero_for_orthonormal_factors_and_grows_otherwise():
  rng = np.random.default_rng(0)
  p = np.linalg.qr(rng.normal(size=(2, 12, 4)))[0]  # stacked: 2 blocks of (12 x 4), P^T P = I
  q = np.linalg.qr(rng.normal(size=(2, 6, 4)))[0].swapaxes(-1, -2).reshape(2, 4, 2, 3)
  module = {"lora_a": p, "lora_e": np.ones((2, 4)), "lora_b": q}
  params = {"backbone": {"layers": {"query": module}}, "heads_x": {"kernel": np.ones((3, 3))}}
  np.testing.assert_allclose(adalora.orthogonality(params), 0.0, atol=1e-10)
  # P doubled: P^T P - I = 3 I, |.|^2 = 9 * 4 per block; Q stays orthonormal.
  doubled = {"backbone": {"layers": {"query": {**module, "lora_a": 2 * p}}}}
  np.testing.assert_allclose(adalora.orthogonality(doubled), 2 * 9 * 4, rtol=1e-5)
  (reg,) = adalora.regularizers(PeftConfig(method="adalora", orth_weight=0.25))
  assert reg.name == "orthogonality"
  np.testing.assert_allclose(reg.fn(doubled, None), 0.25 * 72, rtol=1e-5)
  assert adalora.regularizers(PeftConfig(method="lora")) == ()


def test_frozen_parameters_keep_no_optimizer_state():
  """AdamW's moments and the importance statistics exist for the trained parameters only."""
  config = tiny_config("mlm", steps=10, **{"model.vocab_size": 256,
                                           "objective.max_predictions": 10})
  config.peft.update(method="adalora", init_rank=4, rank=2)
  cfg = models.ModelConfig.from_dict({**config.model.to_dict(), "heads": ("mlm",)}, config.peft)
  ids = jnp.zeros((2, 8), jnp.int32)
  params = models.build(cfg).init(jax.random.key(0), ids)["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  run_features = features.of_config(config)
  tx, _ = optim.build(config, run_features)
  opt_state = tx.init(params)
  flat = params_lib.flatten(params)
  trained = sum(v.size for p, v in flat.items()
                if optim.trainable_predicate(config, run_features)(p))
  adapters = sum(v.size for p, v in flat.items() if "/lora_" in p)
  e_size = sum(v.size for p, v in flat.items() if p.endswith("/lora_e"))
  leaves = jax.tree.leaves(opt_state)
  counters = sum(1 for x in leaves if x.ndim == 0)
  # Adam's two moments + sensitivity and uncertainty of P, E, Q + the final mask + counters.
  assert sum(x.size for x in leaves) == 2 * trained + 2 * adapters + e_size + counters
  assert 0 < adapters <= trained < sum(v.size for v in flat.values())


def _adalora_run(workdir, *flags):
  return run_cli("--config=configs/finetune.py:task=bbc_news,runlocal,peft=adalora",
                 f"--workdir={workdir}", "--config.train.steps=8", "--config.train.batch_size=8",
                 "--config.data.seq_len=32", "--config.evals.every_steps=8",
                 "--config.logging.progress=False", "--config.logging.tensorboard=False",
                 "--config.peft.init_rank=4", "--config.peft.rank=2",
                 "--config.peft.adalora_warmup=2", "--config.peft.adalora_final=2", *flags)


@pytest.mark.slow  # a CLI run: ~12 s idle
def test_adalora_run_reports_the_final_ranks(tmp_path):
  workdir = str(tmp_path / "w")
  proc = _adalora_run(workdir, "--config.logging.every_steps=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  reported = {k[len("peft/rank/"):]: v for k, v in summary.items() if k.startswith("peft/rank/")}
  assert len(reported) == 4  # 2 blocks x (query, value)
  assert summary["peft/rank_total"] == sum(reported.values()) == 2 * 4
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  raw = ckpt.restore_raw_state(8)
  saved = raw["params"]
  es = {p[:-len("/lora_e")]: np.asarray(v) for p, v in params_lib.flatten(saved).items()
        if p.endswith("/lora_e")}
  # The kept singular values are those of the mask fixed at update T - t_f = 6 (the optimizer
  # state's one boolean array, modules in the parameters' order), applied at updates 7 and 8.
  (final_keep,) = [np.asarray(x) for x in jax.tree.leaves(raw["opt_state"])
                   if np.asarray(x).dtype == bool]
  np.testing.assert_array_equal(np.concatenate([e.reshape(-1) != 0 for e in es.values()]),
                                final_keep)
  assert {m: int(np.count_nonzero(e)) for m, e in es.items()} == reported
  assert sum(int((e == 0.0).sum()) for e in es.values()) == 16 - 8  # pruned: exactly zero
  assert adalora.ranks(saved) == reported
  trained = sum(v.size for p, v in params_lib.flatten(saved).items()
                if "/lora_" in p or p.startswith("heads_"))
  assert summary["params/trainable"] == trained
  line = [l for l in proc.stderr.splitlines() if "AdaLoRA ranks:" in l]
  assert len(line) == 1 and "8 kept of 16 (target 8 = 2 per module x 4 modules)" in line[0]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    orth = [json.loads(l)["train/orthogonality"] for l in f if "train/orthogonality" in l]
  assert len(orth) == 8 and orth[0] > 0  # normal(0, 0.02) factors are far from orthonormal


@pytest.mark.parametrize("flags, fragments", [
    (("--config.peft.adalora_final=6",),
     ("peft.adalora_warmup (2) + peft.adalora_final (6) must be < train.steps (8)",)),
    (("--config.peft.rank=5",), ("peft.rank (the AdaLoRA target, 5) must be <= peft.init_rank",)),
])
def test_bad_adalora_schedule_is_one_line(tmp_path, flags, fragments):
  _fails_with(_adalora_run(str(tmp_path / "w"), *flags), *fragments)
  assert not os.path.exists(tmp_path / "w" / "config.json")
