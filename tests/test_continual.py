"""Continual learning (research/continual): the EWC penalty and Fisher against their formulas, the
replay reservoir and sampler, the accuracy-matrix figures, a killed stage resumed bit for bit,
and every bad input in one line."""
import json
import os
import shutil

import flax.linen as nn
import jax
import matplotlib.image
import numpy as np
import pytest

from conftest import run_cli, tiny_config
from research import checkpoint, models, tracking
from research import objectives as objectives_lib
from research import params as params_lib
from research.continual import matrix, penalty, replay, runner
from research.train import optim
from research.train.step import TrainState, make_train_step


def tiny_model():
  cfg = models.ModelConfig(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, vocab_size=64,
                           max_len=16, heads=("classification=classification:3",),
                           dropout_rate=0.0, dtype="float32")
  model = models.build(cfg)
  ids = np.random.default_rng(0).integers(1, 64, (6, 8)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.key(0), ids)["params"]  # eager init: seconds of ops
  return model, params, ids


def test_ewc_penalty_is_its_formula_in_the_train_step():
  model, params, ids = tiny_model()
  rng = np.random.default_rng(1)
  flat = params_lib.flatten(params)
  anchor = {p: rng.normal(size=v.shape).astype(np.float32) for p, v in flat.items()}
  fisher = {p: rng.uniform(size=v.shape).astype(np.float32) for p, v in flat.items()}
  expected = 0.5 * 3.0 * sum(float(np.sum(fisher[p] * (np.asarray(flat[p]) - anchor[p]) ** 2))
                             for p in flat)
  ewc = penalty.ContinualPenalty("ewc", strength=3.0, anchor_source="", scan_layers=False)
  objective = objectives_lib.classification("t", "classification")
  config = tiny_config("finetune")
  tx, schedule = optim.build(config, ())
  step = jax.jit(make_train_step(model, (objective,), tx, schedule, jax.random.key(0),
                                 features=(ewc,)))
  state = TrainState.create(params, tx.init(params))
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
           "label": np.arange(6, dtype=np.int32) % 3}
  data = jax.device_put({"anchor": anchor, "weight": fisher})
  _, metrics = step(state, batch, {"continual": data})
  np.testing.assert_allclose(float(metrics["train/ewc"]), expected, rtol=1e-5)
  # Its gradient, the part the step adds to the task's: strength x F x (param - anchor).
  grads = jax.jit(jax.grad(lambda p, d: penalty.value(p, d, 3.0)))(params, data)
  for path, g in params_lib.flatten(grads).items():
    np.testing.assert_allclose(np.asarray(g), 3.0 * fisher[path] * (np.asarray(flat[path]) -
                                                                    anchor[path]), rtol=1e-5,
                               atol=1e-7)


class SoftmaxRegression(nn.Module):
  """logits = x W + b: an example's cross-entropy gradient is (outer(x, p - y), p - y), with p
  the softmax and y the one-hot label, so the Fisher diagonal has a closed form."""

  @nn.compact
  def __call__(self, x, deterministic=True):
    return {"c_logits": nn.Dense(3)(x)}


def test_fisher_diagonal_is_the_mean_of_squared_closed_form_gradients():
  rng = np.random.default_rng(0)
  features = [{"input_ids": rng.normal(size=4).astype(np.float32), "label": np.int32(i % 3)}
              for i in range(7)]
  model = SoftmaxRegression()
  params = model.init(jax.random.key(0), features[0]["input_ids"][None])["params"]
  params = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), params)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  got = penalty.fisher_diagonal(model, params, (objectives_lib.classification("t", "c"),),
                                features, 4, 7, 2, mesh, ())  # 4 of 7 examples, chunks of 2
  w, b = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
  squares = {"Dense_0/kernel": 0.0, "Dense_0/bias": 0.0}
  for i in np.random.default_rng(7).permutation(7)[:4]:  # the documented choice of examples
    x, label = features[i]["input_ids"].astype(np.float64), features[i]["label"]
    z = x @ w + b
    d = np.exp(z - z.max()) / np.exp(z - z.max()).sum() - np.eye(3)[label]
    squares["Dense_0/kernel"] += np.outer(x, d) ** 2
    squares["Dense_0/bias"] += d ** 2
  assert got.keys() == squares.keys()
  for path, total in squares.items():
    np.testing.assert_allclose(got[path], total / 4, rtol=1e-5, err_msg=path)


@pytest.mark.slow
def test_fisher_diagonal_is_the_mean_squared_per_example_gradient():
  model, params, ids = tiny_model()
  objective = objectives_lib.classification("t", "classification")
  features = [{"input_ids": ids[i], "attention_mask": np.ones(8, np.int32),
               "label": np.int32(i % 3)} for i in range(6)]
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  got = penalty.fisher_diagonal(model, params, (objective,), features, 4, 7, 3, mesh, ())
  chosen = np.random.default_rng(7).permutation(6)[:4]
  def loss(p, f):
    batch = {k: jax.numpy.asarray(v)[None] for k, v in f.items()}
    out = model.apply({"params": p}, batch["input_ids"], attention_mask=batch["attention_mask"])
    return -jax.nn.log_softmax(out["classification_logits"][0])[batch["label"][0]]
  expected = None
  grad = jax.jit(jax.grad(loss))  # one example's gradient, as the formula's reference
  for i in chosen:
    g = jax.tree.map(np.square, grad(params, features[int(i)]))
    expected = g if expected is None else jax.tree.map(np.add, expected, g)
  for path, v in params_lib.flatten(expected).items():
    np.testing.assert_allclose(got[path], np.asarray(v) / 4, rtol=2e-4, atol=1e-9)


def test_reservoir_keeps_a_uniform_sample_of_every_stage():
  hits = np.zeros(50)
  for seed in range(2000):
    buffer = replay.fill(replay.fill(replay.EMPTY, 0, 30, 10, seed), 1, 20, 10, seed)
    assert len(buffer["items"]) == 10 and buffer["seen"] == 50
    for stage, example in buffer["items"]:
      hits[stage * 30 + example] += 1
  share = hits / 2000  # each of the 50 examples is kept with probability 10 / 50
  assert np.abs(share - 0.2).max() < 0.045, share
  assert replay.fill(replay.EMPTY, 0, 30, 10, 3) == replay.fill(replay.EMPTY, 0, 30, 10, 3)
  assert replay.fill(replay.EMPTY, 0, 5, 10, 3)["items"] == [[0, i] for i in range(5)]


def test_replay_sampler_is_deterministic_and_step_indexed():
  class Own:
    def host_batch(self, step):
      return {"x": np.full((6,), 100 + step)}
  features = [{"x": np.int64(i)} for i in range(40)]
  batches = lambda: replay.MixedBatches(Own(), features, 2, seed=5, stage=1)
  forward = [batches().host_batch(s)["x"].tolist() for s in range(6)]
  fresh = batches()
  backward = [fresh.host_batch(s)["x"].tolist() for s in reversed(range(6))][::-1]
  assert forward == backward  # any step, in any order, from any instance: the same rows
  assert len({tuple(b[:2]) for b in forward}) > 3  # ... drawn afresh at every step
  assert all(b[2:] == [100 + s] * 6 for s, b in enumerate(forward))
  other_stage = replay.MixedBatches(Own(), features, 2, seed=5, stage=2)
  assert [other_stage.host_batch(s)["x"].tolist() for s in range(6)] != forward


def test_matrix_figures_are_their_definitions():
  R = np.array([[0.9, 0.1, 0.0], [0.5, 0.8, 0.2], [0.4, 0.6, 0.7]])
  out = matrix.summary(R, ["a", "b", "c"], reference=(0.5, 0.3, 0.1))
  assert out["continual/average_accuracy"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
  assert out["continual/bwt"] == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
  assert out["continual/forgetting/a"] == pytest.approx(0.5)
  assert out["continual/forgetting/b"] == pytest.approx(0.2)
  assert out["continual/fwt"] == pytest.approx(((0.1 - 0.3) + (0.2 - 0.1)) / 2)
  assert out["continual/R/2/1"] == 0.5 and out["continual/R/1/2"] == 0.1


# --- Whole runs: a tiny model, two stages of 6 steps. ---
def tiny_continual(method, scenario="class", **extra):
  from continual import get_config  # pylint: disable=g-import-not-at-top  (configs/ on the path)
  config = get_config(f"runlocal,method={method}")
  config.continual.stages = {"class": "bbc_news:business/entertainment/politics+"
                                      "bbc_news:sports/tech",
                             "task": "bbc_news:business/entertainment+bbc_news:politics/tech"
                             }[scenario]
  config.continual.scenario = scenario
  config.continual.split = "eval"
  config.continual.ewc.fisher_examples = 32
  config.continual.replay.update(size=24, ratio=0.25)
  config.model.update(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64)
  config.data.update(seq_len=32, vocab_size=1024)
  config.train.update(steps=6, batch_size=8)
  config.evals.every_steps = 6
  config.ckpt.update(every_steps=2, keep=3, use_async=False)
  config.logging.update(every_steps=1, progress=False, tensorboard=False)
  config.schedule.warmup_steps = 1
  for key, value in extra.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


@pytest.mark.slow
@pytest.mark.parametrize("method, scenario", [("ewc", "class"), ("replay", "task")])
def test_a_stage_killed_midway_resumes_to_the_uninterrupted_numbers(method, scenario, tmp_path):
  workdir, reference = str(tmp_path / "cl"), str(tmp_path / "uninterrupted")
  summary = runner.run(tiny_continual(method, scenario), workdir)
  shutil.copytree(workdir, reference)  # what the uninterrupted run left
  # What a kill after stage 2's step-2 checkpoint leaves: nothing of that stage after it.
  stages = sorted(os.listdir(os.path.join(workdir, "stages")))
  stage2 = os.path.join(workdir, "stages", stages[1])
  for name in ("4", "6"):
    shutil.rmtree(os.path.join(stage2, "checkpoints", name))
  for name in (runner.STAGE_DONE, "summary.json"):
    os.remove(os.path.join(stage2, name))
  os.remove(os.path.join(workdir, "summary.json"))
  again = runner.run(tiny_continual(method, scenario), workdir)
  assert tracking.read_summaries(stage2)[-1]["init"] == "resumed from step 2"
  assert {k: v for k, v in again.items() if k.startswith("continual/")} == \
      {k: v for k, v in summary.items() if k.startswith("continual/")}
  for stage in stages:
    ours = params_lib.flatten(checkpoint.workdir_params(os.path.join(workdir, "stages", stage)))
    theirs = params_lib.flatten(checkpoint.workdir_params(os.path.join(reference, "stages",
                                                                       stage)))
    for path in theirs:
      assert np.array_equal(ours[path], theirs[path]), (stage, path)
  got = {r["step"]: r for r in tracking.read_metrics(stage2)}
  penalty_key = "train/ewc" if method == "ewc" else "train/bbc_news_business_entertainment/loss"
  for r in tracking.read_metrics(os.path.join(reference, "stages", stages[1])):
    if "train/loss" in r:
      assert got[r["step"]]["train/loss"] == r["train/loss"], r["step"]
      assert got[r["step"]][penalty_key] == r[penalty_key], r["step"]
  # R's rows are the stages' own final evaluations of every task (split 'eval' here).
  names = [s[len("stageN_"):] for s in stages]
  for i, stage in enumerate(stages):
    final = [r for r in tracking.read_metrics(os.path.join(reference, "stages", stage))
             if f"eval/{names[0]}/accuracy" in r][-1]
    assert final["step"] == 6
    for j, name in enumerate(names):
      assert summary[f"continual/R/{i + 1}/{j + 1}"] == final[f"eval/{name}/accuracy"], (i, j)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["continual/stage"] for line in f] == [1, 2]
  # 2 tasks: a (1.6 x 2 + 3) x (1.2 x 2 + 2) inch heatmap at 100 dpi
  assert matplotlib.image.imread(os.path.join(workdir, runner.HEATMAP)).shape[:2] == (440, 620)


@pytest.mark.parametrize("flags, fragment", [
    (["--config.continual.stages="], "continual.stages is empty"),
    (["--config.continual.stages=bbc_news:business/entertainment+bbc_news:entertainment/politics"
      "+bbc_news:sports/tech"], "repeats class(es) ['entertainment']"),
    (["--config.continual.stages=bbc_news:business/entertainment+bbc_news:politics/sports"],
     "drops class(es) ['tech']"),
    (["--config.continual.method=replay", "--config.continual.replay.ratio=1.0"],
     "continual.replay.ratio must be in [0, 1), got 1.0"),
])
def test_bad_input_is_one_line_and_writes_nothing(flags, fragment, tmp_path):
  workdir = tmp_path / "cl"
  proc = run_cli("--config=configs/continual.py:runlocal", f"--workdir={workdir}", *flags)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
  assert not workdir.exists()


def test_a_workdir_of_another_sequence_is_refused(tmp_path):
  from research.errors import UserError  # pylint: disable=g-import-not-at-top
  config = tiny_continual("naive")
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  runner.check_same_sequence(config, str(tmp_path))  # the same sequence: resumed
  config.continual.stages = "bbc_news:business/entertainment+bbc_news:politics/sports/tech"
  with pytest.raises(UserError, match="continual.stages"):
    runner.check_same_sequence(config, str(tmp_path))
