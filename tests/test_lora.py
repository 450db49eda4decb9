"""LoRA (research/peft/lora.py) and the PEFT seam: the update, merge, what is differentiated,
and bad input through the CLI."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_cli
from test_cli_errors import _fails_with
from research import features, models
from research import params as params_lib
from research.peft import lora
from research.peft.config import PeftConfig

TINY = dict(kind="encoder", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
            mlp_dim=64, max_len=16, dropout_rate=0.0, dtype="float32",
            heads=("classification",), num_labels=3)


def _init(cfg, seed=0):
  ids = jnp.arange(16).reshape(2, 8) % cfg.vocab_size
  return models.build(cfg).init(jax.random.key(seed), ids)["params"], ids


def _apply(cfg, params, ids):
  return models.build(cfg).apply({"params": params}, ids)["hidden"]


def _with_base(lora_params, base_params):
  """The LoRA model's parameters with every base parameter taken from `base_params`."""
  base = params_lib.flatten(base_params)
  flat = {p: base.get(p, v) for p, v in params_lib.flatten(lora_params).items()}
  return params_lib.unflatten(flat)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_step_zero_is_the_base_model_and_merge_matches(scan_layers):
  base_cfg = models.ModelConfig(**TINY, scan_layers=scan_layers)
  cfg = dataclasses.replace(base_cfg, peft=PeftConfig(method="lora", rank=4, alpha=8.0))
  base, ids = _init(base_cfg)
  params = _with_base(_init(cfg, seed=1)[0], base)
  added = sorted(p for p in params_lib.flatten(params) if "lora" in p)
  stack = "layers" if scan_layers else "layer_0"
  assert f"backbone/{stack}/attention/query/lora_a" in added
  assert not any("/key/" in p or "/mlp/" in p for p in added)  # default: query and value only
  np.testing.assert_array_equal(_apply(cfg, params, ids), _apply(base_cfg, base, ids))
  # Trained (non-zero) B: the output moves, and merging gives the same function in the base model.
  rng = np.random.default_rng(0)
  flat = params_lib.flatten(params)
  flat = {p: (rng.normal(0, 0.5, v.shape).astype(np.float32) if p.endswith("lora_b") else v)
          for p, v in flat.items()}
  trained = params_lib.unflatten(flat)
  out = _apply(cfg, trained, ids)
  assert np.abs(out - _apply(base_cfg, base, ids)).max() > 1e-2
  merged, adapters = lora.merge(trained, cfg.peft)
  assert set(params_lib.flatten(merged)) == set(params_lib.flatten(base))
  np.testing.assert_allclose(_apply(base_cfg, merged, ids), out, atol=1e-5)
  restored = params_lib.flatten(lora.unmerge(merged, adapters, cfg.peft))
  for path, value in flat.items():
    np.testing.assert_allclose(restored[path], value, atol=1e-6, err_msg=path)


def test_rslora_scale_and_attention_output_target():
  cfg = models.ModelConfig(**TINY, peft=PeftConfig(method="lora", rank=4, alpha=8.0, rslora=True,
                                                   targets=("attention/out$",)))
  assert lora.scale(cfg.peft) == 8.0 / 2.0
  params, ids = _init(cfg)
  shapes = {p: v.shape for p, v in params_lib.flatten(params).items() if "lora" in p}
  # out contracts (heads, head_dim): A is (heads, head_dim, rank), B (rank, hidden).
  assert shapes["backbone/layer_0/attention/out/lora_a"] == (4, 8, 4)
  assert shapes["backbone/layer_0/attention/out/lora_b"] == (4, 32)
  flat = params_lib.flatten(params)
  flat = {p: (np.full(v.shape, 0.1, np.float32) if p.endswith("lora_b") else v)
          for p, v in flat.items()}
  trained = params_lib.unflatten(flat)
  merged, _ = lora.merge(trained, cfg.peft)
  base_cfg = dataclasses.replace(cfg, peft=PeftConfig())
  np.testing.assert_allclose(_apply(base_cfg, merged, ids), _apply(cfg, trained, ids), atol=1e-5)


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state():
  """The LoRA step's compiled cost lacks the frozen kernels' weight gradients, and its optimizer
  state holds the trained parameters' moments only."""
  from research.train import optim, step as step_lib  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  costs, states = {}, {}
  for method in ("none", "lora"):
    config = tiny_config("mlm", **{"model.vocab_size": 256, "model.dropout_rate": 0.0,
                                   "objective.max_predictions": 10})
    config.peft.method = method
    cfg = models.ModelConfig.from_dict({**config.model.to_dict(), "heads": ("mlm",)},
                                       config.peft)
    model = models.build(cfg)
    from research import bench  # pylint: disable=g-import-not-at-top
    batch = bench.synthetic_batch(bench.Workload("", "encoder", "", 64, 4), 10)
    params = model.init(jax.random.key(0), batch["input_ids"],
                        masked_positions=batch["masked_positions"])["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    run_features = features.of_config(config)
    tx, lr = optim.build(config, run_features)
    state = step_lib.TrainState.create(params, tx.init(params))
    from research import objectives  # pylint: disable=g-import-not-at-top
    train_step = step_lib.make_train_step(
        model, objectives.pretraining(config.objective)[0], tx, lr, jax.random.key(1),
        trainable=optim.trainable_predicate(config, run_features))
    compiled = jax.jit(train_step).lower(state, batch).compile()
    costs[method] = compiled.cost_analysis()["flops"]
    states[method] = sum(x.size for x in jax.tree.leaves(state.opt_state))
    if method == "lora":
      trained = sum(v.size for p, v in params_lib.flatten(params).items()
                    if optim.trainable_predicate(config, run_features)(p))
      counters = sum(1 for x in jax.tree.leaves(state.opt_state) if x.ndim == 0)
      assert states[method] == 2 * trained + counters  # Adam's two moments + step counters
  assert costs["lora"] < 0.85 * costs["none"], costs


def _peft_run(workdir, *flags):
  return run_cli("--config=configs/finetune.py:task=bbc_news,runlocal,peft=lora",
                 f"--workdir={workdir}", "--config.train.steps=3", "--config.train.batch_size=8",
                 "--config.data.seq_len=32", "--config.evals.every_steps=3",
                 "--config.logging.progress=False", "--config.logging.tensorboard=False", *flags)


def test_lora_run_counts_and_freezes(tmp_path):
  workdir = str(tmp_path / "w")
  proc = _peft_run(workdir, "--config.ckpt.every_steps=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  first = params_lib.flatten(ckpt.restore_raw_state(1)["params"])
  last = params_lib.flatten(ckpt.restore_raw_state(3)["params"])
  changed = {p for p in first if not np.array_equal(first[p], last[p])}
  trained = {p for p in first if "/lora_" in p or p.startswith("heads_")}
  assert changed <= trained and any("lora_b" in p for p in changed), sorted(changed)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["params/trainable"] == sum(first[p].size for p in trained)
  assert summary["params/total"] == sum(v.size for v in first.values())
  share = 100 * summary["params/trainable"] / summary["params/total"]
  assert f"({summary['params/trainable']} = {share:.2f}% trained)" in proc.stderr


@pytest.mark.parametrize("flags, fragments", [
    (("--config.peft.targets=('attention/qkv$',)",),
     ("peft.targets pattern 'attention/qkv$' matches no projection",
      "backbone/layer_N/attention/query", "backbone/layer_N/mlp/down")),
    (("--config.peft.rank=200",), ("peft rank 200 is larger than backbone/layer_0/attention/query",
                                   "at most 128")),
    (("--config.peft.method=dora",), ("peft.method must be one of", "'dora'")),
])
def test_bad_lora_input_is_one_line(tmp_path, flags, fragments):
  _fails_with(_peft_run(str(tmp_path / "w"), *flags), *fragments)
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_bitfit_needs_biases(tmp_path):
  proc = run_cli("--config=configs/clm.py:runlocal,peft=bitfit", f"--workdir={tmp_path / 'w'}",
                 "--config.model.use_bias=False", "--config.model.norm=rmsnorm",
                 "--config.train.steps=2", "--config.logging.progress=False")
  _fails_with(proc, "peft.method=bitfit trains biases", "model.use_bias=False")
