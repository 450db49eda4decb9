"""`model.scan_layers`: the scanned blocks compute what the unrolled ones do on the same weights,
their parameters are stacked and sharded as the rules say, and every reader of weights (HF import
and export, `init.weights`) takes either layout; a resume keeps its layout."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models, sharding
from research.models import layers, layout

ENCODER = dict(kind="encoder", vocab_size=300, hidden_size=32, num_layers=3, num_heads=4,
               mlp_dim=64, max_len=64, heads=("mlm", "sentence_pair"), dtype="float32")
GPT2 = dict(kind="decoder", vocab_size=300, hidden_size=32, num_layers=3, num_heads=4,
            mlp_dim=64, max_len=64, type_vocab_size=0, heads=("lm",), dtype="float32",
            activation="gelu_tanh", layer_norm_eps=1e-5, pooler=False)
LLAMA = dict(GPT2, norm="rmsnorm", activation="silu", gated_mlp=True, use_bias=False,
             position_embedding="rotary", num_kv_heads=2, tie_embeddings=False)


def _loss(model, params, ids, mask, masked):
  out = model.apply({"params": params}, ids, attention_mask=mask, masked_positions=masked)
  return sum(jnp.mean(v.astype(jnp.float32) ** 2) for v in out.values()), out


@pytest.mark.parametrize("arch, remat", [
    ("encoder", "none"), ("gpt2", "full"),
    pytest.param("encoder", "full", marks=pytest.mark.slow),  # the default suite keeps two
    pytest.param("llama", "none", marks=pytest.mark.slow)])
def test_scanned_model_matches_unrolled_on_restacked_weights(arch, remat):
  cfg = dict({"encoder": ENCODER, "gpt2": GPT2, "llama": LLAMA}[arch], remat=remat)
  ids = jax.random.randint(jax.random.key(1), (2, 12), 5, 300)
  mask = jnp.array([[1] * 12, [1] * 8 + [0] * 4])
  masked = jnp.array([[1, 4, 7], [0, 2, 5]])
  unrolled = models.build(cfg)
  params = nn.meta.unbox(jax.jit(unrolled.init)(jax.random.key(0), ids, masked_positions=masked))
  params = params["params"]
  scanned = models.build(dict(cfg, scan_layers=True))
  scanned_init = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.key(0), ids,
                                              masked_positions=masked))["params"]
  stacked = layout.stack_layers(params)
  # The scanned model's own tree, each block at its index on the leading axis.
  assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, scanned_init)
  assert "layer_0" not in scanned_init["backbone"]
  grad = lambda m: jax.value_and_grad(lambda p: _loss(m, p, ids, mask, masked), has_aux=True)
  (value, out), grads = jax.jit(grad(unrolled))(params)
  (scanned_value, scanned_out), scanned_grads = jax.jit(grad(scanned))(stacked)
  for key in out:
    np.testing.assert_allclose(scanned_out[key], out[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(scanned_value, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               scanned_grads, layout.stack_layers(grads))
  # The scanned step traces one block (a scan), the unrolled one every block.
  def primitives(m, p):
    return [e.primitive.name for e in jax.make_jaxpr(grad(m))(p).jaxpr.eqns]
  assert "scan" in primitives(scanned, stacked) and "scan" not in primitives(unrolled, params)


def test_layouts_round_trip_and_keep_block_order():
  blocks = {f"layer_{i}": {"mlp": {"kernel": np.full((2, 3), i, np.float32)}} for i in range(12)}
  params = {"token_embed": {"embedding": np.ones((4, 2))}, "backbone": {**blocks, "ln": {}}}
  stacked = layout.stack_layers(params)
  assert layout.is_stacked(stacked) and not layout.is_stacked(params)
  # Block 10 at index 10 (not after block 1, as sorting the names would put it).
  np.testing.assert_array_equal(stacked["backbone"]["layers"]["mlp"]["kernel"][:, 0, 0],
                                np.arange(12))
  assert layout.as_layout(stacked, scan_layers=True) is stacked
  back = layout.as_layout(stacked, scan_layers=False)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_stacked_parameters_shard_on_fsdp_and_tensor_not_on_layers():
  ids = jnp.ones((1, 8), jnp.int32)
  cfg = dict(GPT2, scan_layers=True)
  abstract = jax.eval_shape(lambda: models.build(cfg).init(jax.random.key(0), ids))["params"]
  query = abstract["backbone"]["layers"]["attention"]["query"]["kernel"]
  assert query.names == ("layers", "embed", "heads", "kv") and query.value.shape == (3, 32, 4, 8)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  specs = sharding.shardings_of(abstract, mesh, sharding.DEFAULT_RULES)
  assert specs["backbone"]["layers"]["attention"]["query"]["kernel"].spec == \
      jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert specs["backbone"]["layers"]["mlp"]["down"]["kernel"].spec == \
      jax.sharding.PartitionSpec(None, "tensor", "fsdp")


def test_each_scanned_block_draws_its_own_dropout():
  """Blocks whose projections are zero add dropout(bias) to the residual: out = sum over blocks
  of their dropout masks (x 2 at rate 0.5). Shared random bits would make every block's mask the
  same, so each element would be kept by no block or by all of them."""
  num_layers = 4
  cfg = models.ModelConfig(**dict(GPT2, num_layers=num_layers, scan_layers=True,
                                  dropout_rate=0.5))

  class Blocks(nn.Module):
    @nn.compact
    def __call__(self, x):
      mask = layers.AttentionMask(None, None, causal=True)
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      return layers.transformer_blocks(cfg, x, mask, positions, False, pre_norm=True)

  x = jnp.zeros((2, 16, 32))
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  shapes = nn.meta.unbox(jax.eval_shape(Blocks().init, rngs, x)["params"])
  ones = lambda path: path[-1].key == "scale" or (path[-1].key == "bias" and
                                                  path[-2].key in ("out", "down"))
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: (jnp.ones if ones(path) else jnp.zeros)(p.shape, p.dtype), shapes)
  out = jax.jit(Blocks().apply)({"params": params}, x, rngs={"dropout": jax.random.key(2)})
  kept = np.asarray(out) / 2  # how many of the 2 x num_layers dropouts kept each element
  np.testing.assert_array_equal(kept, np.round(kept))
  assert set(np.unique(kept)) - {0, num_layers, 2 * num_layers}, np.unique(kept)


def _unrolled_params(cfg):
  ids = jnp.ones((1, 8), jnp.int32)
  model = models.build(cfg)
  return jax.device_get(nn.meta.unbox(jax.jit(model.init)(
      jax.random.key(0), ids, masked_positions=ids[:, :2])["params"]))


@pytest.mark.parametrize("cfg", [ENCODER, LLAMA], ids=["bert", "llama"])
def test_hf_export_is_the_same_from_either_layout_and_import_stacks(tmp_path, cfg):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  cfg = dict(cfg, heads=("mlm",) if cfg["kind"] == "encoder" else ("lm",))
  params = _unrolled_params(cfg)
  hf.save_pretrained(cfg, params, str(tmp_path / "unrolled"))
  hf.save_pretrained(dict(cfg, scan_layers=True), layout.stack_layers(params),
                     str(tmp_path / "scanned"))
  for name in ("config.json", "model.safetensors"):
    assert (tmp_path / "unrolled" / name).read_bytes() == (tmp_path / "scanned" / name).read_bytes()
  last_block = f".{cfg['num_layers'] - 1}."  # encoder.layer.2.*, model.layers.2.*
  exported = load_file(str(tmp_path / "scanned" / "model.safetensors"))
  assert any(last_block in name for name in exported)
  model_cfg, imported = hf.load_pretrained(str(tmp_path / "scanned"), scan_layers=True)
  assert model_cfg.scan_layers
  expected = layout.stack_layers(params)
  assert jax.tree.structure(imported) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, imported, expected)


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_init_weights_reads_a_workdir_of_either_layout_into_either(tmp_path, saved_scanned):
  from research import checkpoint, params as params_lib  # pylint: disable=g-import-not-at-top
  params = _unrolled_params(GPT2)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), use_async=False)
  ckpt.save(0, {"params": layout.as_layout(params, saved_scanned)}, {"next_step": 0}, {})
  ckpt.wait()
  ckpt.close()
  for scan_layers in (False, True):
    got = checkpoint.weights_of(str(tmp_path), scan_layers)
    expected = params_lib.flatten(layout.as_layout(params, scan_layers))
    assert sorted(got) == sorted(expected)
    for path, value in expected.items():
      np.testing.assert_array_equal(got[path], value, err_msg=path)


def _run(workdir, **overrides):
  """A 2-step tiny MLM run (`configs/mlm.py:runlocal`, shrunk); returns its summary."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from research import train  # pylint: disable=g-import-not-at-top
  config = tiny_config("mlm", steps=2, **{"train.batch_size": 8, "data.seq_len": 32,
                                          "data.vocab_size": 1024, "logging.tensorboard": False,
                                          **overrides})
  return train.run(config, workdir)


@pytest.mark.slow
def test_workdirs_of_either_layout_load_into_either_and_export_the_same_hf_files(tmp_path):
  """A scanned run -> init.weights of an unrolled run (learning rate 0: its weights are the
  source's, unstacked) -> both exported to HF give the same tensors; importing that export
  stacked gives the scanned run's weights back; resuming the scanned run unrolled is refused."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.convert.workdir import export_hf  # pylint: disable=g-import-not-at-top
  from research.errors import UserError  # pylint: disable=g-import-not-at-top
  scanned, unrolled = str(tmp_path / "scanned"), str(tmp_path / "unrolled")
  _run(scanned, **{"model.scan_layers": True})
  summary = _run(unrolled, **{"init.weights": scanned, "optim.learning_rate": 0.0,
                              "train.steps": 1})
  source, target = checkpoint.workdir_params(scanned), checkpoint.workdir_params(unrolled)
  assert layout.is_stacked(source) and not layout.is_stacked(target)
  n = len(jax.tree.leaves(target))
  assert summary["init"].endswith(f"({n} of {n} arrays)"), summary["init"]
  jax.tree.map(np.testing.assert_array_equal, target, layout.unstack_layers(source))

  for workdir in (scanned, unrolled):
    export_hf(workdir, f"{workdir}_hf")  # what `python -m research.convert --to_hf` runs
  from_scanned, from_unrolled = (load_file(f"{w}_hf/model.safetensors")
                                 for w in (scanned, unrolled))
  assert sorted(from_scanned) == sorted(from_unrolled)
  for name, tensor in from_unrolled.items():
    np.testing.assert_array_equal(from_scanned[name], tensor, err_msg=name)
  with open(f"{scanned}_hf/config.json") as a, open(f"{unrolled}_hf/config.json") as b:
    assert json.load(a) == json.load(b)

  model_cfg, imported = hf.load_pretrained(f"{scanned}_hf", scan_layers=True)
  assert model_cfg.scan_layers and layout.is_stacked(imported)
  jax.tree.map(np.testing.assert_array_equal, imported, source)

  with pytest.raises(UserError, match=r"scan_layers=True \(checkpoint\) vs False \(config\)"):
    _run(scanned, **{"train.steps": 4})
