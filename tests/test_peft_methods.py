"""Adapters, prefix tuning, prompt tuning and IA3 (research/peft): what each computes on a tiny
model, that each trains through the CLI with the parameter count its shapes give, and the
one-line refusals."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from research import checkpoint
from research import models
from research import params as params_lib
from research.models.config import ModelConfig
from research.peft import ia3
from research.peft import prefix
from research.peft.config import PeftConfig
from test_cli_errors import _fails_with

BATCH, LENGTH, VOCAB = 2, 8, 50


def tiny(kind="encoder", method="none", scan=False, num_layers=2, **peft):
  heads = ("classification",) if kind == "encoder" else ("lm",)
  return ModelConfig(kind=kind, vocab_size=VOCAB, hidden_size=16, num_layers=num_layers, num_heads=2,
                     mlp_dim=32, max_len=64, dtype="float32", heads=heads, scan_layers=scan,
                     peft=PeftConfig(method=method, num_virtual_tokens=3, adapter_size=4, **peft))


def inputs(seed=0):
  ids = jax.random.randint(jax.random.PRNGKey(seed), (BATCH, LENGTH), 1, VOCAB)
  mask = jnp.ones((BATCH, LENGTH), jnp.int32).at[1, 5:].set(0)  # row 1: 3 padding tokens
  return ids, mask


def init(cfg, seed=0, **kwargs):
  ids, mask = inputs()
  return params_lib.flatten(models.build(cfg).init(jax.random.PRNGKey(seed), ids,
                                                   attention_mask=mask, **kwargs)["params"])


def apply(cfg, flat, *args, **kwargs):
  return models.build(cfg).apply({"params": params_lib.unflatten(flat)}, *args, **kwargs)


def with_base(flat, base):
  """`flat` (a PEFT model's parameters) with every parameter the base model has taken from it."""
  assert set(base) < set(flat)
  return {**flat, **base}


def real_rows(x, mask):
  return np.asarray(x)[np.asarray(mask).astype(bool)]


@pytest.mark.parametrize("kind,scan", [("encoder", False), ("decoder", True)])
@pytest.mark.parametrize("method", ["adapter", "ia3"])
def test_adapter_and_ia3_start_as_the_base_model(method, kind, scan):
  """Post-LN (encoder) and pre-LN (decoder) blocks, unrolled and scanned."""
  ids, mask = inputs()
  base = init(tiny(kind, scan=scan))
  cfg = tiny(kind, method, scan)
  params = with_base(init(cfg, seed=1), base)
  expected = apply(tiny(kind, scan=scan), base, ids, attention_mask=mask)
  out = apply(cfg, params, ids, attention_mask=mask)
  for key in expected:
    np.testing.assert_allclose(out[key], expected[key], atol=1e-6)
  # ...and the method's own parameters do act: moved off their initial values, outputs move.
  own = {p: v for p, v in params.items() if p not in base}
  rng = np.random.default_rng(0)
  moved = {p: v + rng.normal(0, 0.5, v.shape) for p, v in own.items()}
  hidden = apply(cfg, {**params, **moved}, ids, attention_mask=mask)["hidden"]
  assert np.abs(real_rows(hidden, mask) - real_rows(expected["hidden"], mask)).max() > 1e-3
  layer = "layers" if scan else "layer_1"
  names = ({f"backbone/{layer}/adapter_{s}/{d}/{w}" for s in ("attention", "mlp")
            for d in ("down", "up") for w in ("kernel", "bias")} if method == "adapter" else
           {f"backbone/{layer}/{m}/ia3" for m in ("attention/key", "attention/value", "mlp/down")})
  assert names <= set(own)


@pytest.mark.parametrize("kind,scan", [("encoder", False), ("decoder", True)])
def test_ia3_merged_equals_unmerged(kind, scan):
  ids, mask = inputs()
  cfg = tiny(kind, "ia3", scan)
  params = init(cfg)
  rng = np.random.default_rng(0)
  params = {p: (v * rng.uniform(0.5, 1.5, v.shape) if p.endswith("/ia3") else v)
            for p, v in params.items()}
  merged = params_lib.flatten(ia3.merge(params_lib.unflatten(params)))
  assert not any(p.endswith("/ia3") for p in merged)
  key = "classification_logits" if kind == "encoder" else "lm_logits"
  np.testing.assert_allclose(apply(tiny(kind, scan=scan), merged, ids, attention_mask=mask)[key],
                             apply(cfg, params, ids, attention_mask=mask)[key], atol=1e-5)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_prefixes_act_as_keys_and_values_of_tokens_in_front(kind):
  """A prefix model whose prefixes are the base model's keys and values of n tokens in front
  gives the base model's outputs on those n tokens + the real ones: every query (causal ones
  too) sees all prefixes, padded keys stay masked, and nothing else changes."""
  n = 3
  ids, mask = inputs()
  front = jnp.array([[5, 6, 7]] * BATCH)
  # Past the first block an encoder's front tokens also read the row's tokens (a prefix does not).
  num_layers = 1 if kind == "encoder" else 2
  base_cfg, cfg = tiny(kind, num_layers=num_layers), tiny(kind, "prefix", num_layers=num_layers)
  base = init(base_cfg)
  full_mask = jnp.concatenate([jnp.ones((BATCH, n), jnp.int32), mask], axis=1)
  base_out, captured = apply(base_cfg, base, jnp.concatenate([front, ids], axis=1),
                             attention_mask=full_mask, capture_intermediates=True,
                             mutable=("intermediates",))
  prefixes = {}
  for i in range(num_layers):
    attention = captured["intermediates"]["backbone"][f"layer_{i}"]["attention"]
    for part in ("key", "value"):
      row = np.asarray(attention[part]["__call__"][0])
      np.testing.assert_allclose(row[0, :n], row[1, :n], atol=1e-6)  # the same for every row
      prefixes[f"backbone/layer_{i}/attention/prefix/{part}"] = row[0, :n]
  params = with_base(init(cfg), base)
  assert set(prefixes) == set(params) - set(base)
  params.update(prefixes)
  positions = jnp.broadcast_to(n + jnp.arange(LENGTH), (BATCH, LENGTH))
  out = apply(cfg, params, ids, attention_mask=mask, positions=positions)
  np.testing.assert_allclose(real_rows(out["hidden"], mask),
                             real_rows(base_out["hidden"][:, n:], mask), atol=1e-5)
  # A padded key is still masked: other ids under the padding change no real output.
  repadded = apply(cfg, params, ids.at[1, 5:].set(9), attention_mask=mask, positions=positions)
  np.testing.assert_allclose(real_rows(repadded["hidden"], mask),
                             real_rows(out["hidden"], mask), atol=1e-6)
  # The prefixes do act: the base model alone on the real tokens differs.
  alone = apply(base_cfg, base, ids, attention_mask=mask, positions=positions)
  assert not np.allclose(real_rows(alone["hidden"], mask), real_rows(out["hidden"], mask),
                         atol=1e-3)


@pytest.mark.slow  # both layouts compile: ~6 s each idle
@pytest.mark.parametrize("scan", [False, True])
def test_prefix_projection_materializes_to_plain_prefixes(scan):
  ids, mask = inputs()
  cfg = tiny("decoder", "prefix", scan, prefix_projection=8)
  params = init(cfg)
  assert {"backbone/prefix_encoder/embedding", "backbone/prefix_encoder/hidden/kernel"} <= set(params)
  plain = params_lib.flatten(prefix.materialize(params_lib.unflatten(params)))
  layer = "layers" if scan else "layer_0"
  assert plain[f"backbone/{layer}/attention/prefix/key"].shape[-3:] == (3, 2, 8)
  assert set(plain) == set(init(tiny("decoder", "prefix", scan)))
  np.testing.assert_allclose(
      apply(tiny("decoder", "prefix", scan), plain, ids, attention_mask=mask)["lm_logits"],
      apply(cfg, params, ids, attention_mask=mask)["lm_logits"], atol=1e-5)


ENCODER_HEADS = ("mlm", "sentence_pair", "classification", "token_classification", "span")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_prompt_keeps_every_heads_output_shape(kind):
  ids, mask = inputs()
  heads = ENCODER_HEADS if kind == "encoder" else ("lm",)
  base_cfg = ModelConfig(**{**tiny(kind).__dict__, "heads": heads})
  cfg = ModelConfig(**{**tiny(kind, "prompt").__dict__, "heads": heads})
  masked = dict(masked_positions=jnp.array([[1, 2]] * BATCH))
  base_out = apply(base_cfg, init(base_cfg, **masked), ids, attention_mask=mask, **masked)
  out = apply(cfg, init(cfg, **masked), ids, attention_mask=mask, **masked)
  assert {k: v.shape for k, v in out.items() if k != "prompt_hidden"} == {
      k: v.shape for k, v in base_out.items()}
  assert out["prompt_hidden"].shape == (BATCH, 3, 16)


@pytest.mark.parametrize("classifier,offset", [("pooled", 0), ("first_token_mlp", 2)])
def test_prompt_is_tokens_in_front_read_at_position_0(classifier, offset):
  """A prompt made of the embeddings of ids p gives the base model's outputs on p + the tokens
  (positions from 0, or RoBERTa's offset; token type 0; mask 1): real-token states, and the
  classifier reading position 0 (the first virtual token)."""
  front = np.array([5, 6, 7])
  ids, mask = inputs()
  types = jnp.zeros_like(ids).at[:, 4:].set(1)
  fields = dict(classifier=classifier, position_offset=offset, pooler=True)
  base_cfg = ModelConfig(**{**tiny().__dict__, **fields})
  cfg = ModelConfig(**{**tiny(method="prompt").__dict__, **fields})
  base = init(base_cfg)
  params = with_base(init(cfg), base)
  prompt = params["prompt/embedding"]
  table = np.asarray(base["token_embed/embedding"])
  assert all((np.abs(table - row).max(-1) == 0).any() for row in np.asarray(prompt)), \
      "the prompt starts as rows of the token embedding"
  params["prompt/embedding"] = table[front]
  out = apply(cfg, params, ids, attention_mask=mask, token_type_ids=types)
  full = apply(base_cfg, base, jnp.concatenate([jnp.broadcast_to(front, (BATCH, 3)), ids], 1),
               attention_mask=jnp.concatenate([jnp.ones((BATCH, 3), jnp.int32), mask], 1),
               token_type_ids=jnp.concatenate([jnp.zeros((BATCH, 3), jnp.int32), types], 1))
  np.testing.assert_allclose(real_rows(out["hidden"], mask),
                             real_rows(full["hidden"][:, 3:], mask), atol=1e-5)
  np.testing.assert_allclose(out["classification_logits"], full["classification_logits"],
                             atol=1e-5)
  np.testing.assert_allclose(out["pooled"], full["pooled"], atol=1e-5)


# --- Through the CLI ------------------------------------------------------------------------

FAST = ("--config.train.steps=3", "--config.train.batch_size=8", "--config.data.seq_len=32",
        "--config.data.vocab_size=2048", "--config.evals.every_steps=3",
        "--config.ckpt.every_steps=1", "--config.logging.progress=False",
        "--config.logging.tensorboard=False")


def method_params(model: dict, peft: dict) -> int:
  """The number of parameters a method adds, from the model's sizes alone."""
  d, layers, n = model["hidden_size"], model["num_layers"], peft["num_virtual_tokens"]
  kv = (model["num_kv_heads"] or model["num_heads"]) * (
      model["attention_head_dim"] or d // model["num_heads"])  # kv_heads * head_dim
  s, h = peft["adapter_size"], peft["prefix_projection"]
  return {
      "adapter": layers * 2 * (d * s + s + s * d + d),
      "ia3": layers * (kv + kv + model["mlp_dim"]),
      "prefix": (n * d + d * h + h + layers * (h + 1) * 2 * kv) if h else layers * 2 * n * kv,
      "prompt": n * d,
  }[peft["method"]]


@pytest.mark.slow  # ~12 s each on 2 idle cores, ~22 s under load
@pytest.mark.parametrize("method,extra", [("adapter", ()), ("ia3", ()), ("prompt", ()),
                                          ("prefix", ("--config.peft.prefix_projection=16",))])
def test_each_method_trains_only_its_parameters(tmp_path, method, extra):
  workdir = str(tmp_path / "w")
  proc = run_cli(f"--config=configs/finetune.py:task=bbc_news,runlocal,peft={method}",
                 f"--workdir={workdir}", *FAST, *extra)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  first, last = (params_lib.flatten(ckpt.restore_raw_state(s)["params"]) for s in (1, 3))
  heads = sum(v.size for p, v in last.items() if p.startswith("heads_"))
  assert summary["params/trainable"] == method_params(config["model"], config["peft"]) + heads
  assert summary["params/total"] == sum(v.size for v in last.values())
  trained = PeftConfig.from_dict(config["peft"]).trainable_patterns
  changed = {p for p in first if not np.array_equal(first[p], last[p])}
  own = {p for p in last if re.search(trained[0], p)}
  assert own and own <= changed, sorted(own - changed)
  assert all(any(re.search(t, p) for t in trained) for p in changed), sorted(changed)


@pytest.mark.slow  # a CLI run that fails in resolve: ~5 s idle
def test_prefix_refuses_the_cudnn_attention(tmp_path):
  proc = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal,peft=prefix",
                 f"--workdir={tmp_path}/w", *FAST, "--config.model.attention_impl=cudnn")
  _fails_with(proc, "peft.method=prefix needs a dense attention mask", "model.attention_impl=xla")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow  # a CLI run that fails in resolve: ~5 s idle
def test_prompt_refuses_a_decoder(tmp_path):
  proc = run_cli("--config=configs/clm.py:runlocal,peft=prompt", f"--workdir={tmp_path}/w",
                 "--config.train.steps=3")
  _fails_with(proc, "peft.method=prompt needs one document per row", "use prefix, lora or ia3")
  assert not os.path.exists(tmp_path / "w")


def test_prompt_refuses_more_positions_than_learned(tmp_path):
  proc = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal,peft=prompt",
                 f"--workdir={tmp_path}/w", *FAST, "--config.peft.num_virtual_tokens=481")
  _fails_with(proc, "data.seq_len (32) + peft.num_virtual_tokens (481)", "model.max_len=512")
  assert not os.path.exists(tmp_path / "w")
