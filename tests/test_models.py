"""The encoder/decoder: shapes, padding, causality and packed-segment isolation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.errors import UserError
from research.models import layers
from research.models.layers import positions_from_segments

ENCODER = dict(kind="encoder", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
               mlp_dim=64, max_len=64, heads=("mlm", "sentence_pair"), dtype="float32")
DECODER = dict(kind="decoder", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
               mlp_dim=64, max_len=64, type_vocab_size=0, heads=("lm",), dtype="float32",
               activation="gelu_tanh", layer_norm_eps=1e-5)


def init(model_cfg, ids, **kw):
  """The model and its initial parameters, initialised as one compiled program (eager, each
  operation compiles on its own: most of these tests' time)."""
  model = models.build(model_cfg)
  params = jax.jit(lambda key: model.init(key, ids, **kw))(jax.random.key(0))["params"]
  return model, params


def apply(model, params, ids, **kw):
  """`model.apply` on `ids` as one compiled program."""
  return jax.jit(lambda p: model.apply({"params": p}, ids, **kw))(params)


def test_encoder_outputs_and_head_shapes():
  ids = jax.random.randint(jax.random.key(1), (2, 16), 5, 300)
  positions = jnp.array([[1, 3, 5], [0, 2, 4]])
  model, params = init(ENCODER, ids, masked_positions=positions)
  out = apply(model, params, ids, masked_positions=positions)
  assert out["hidden"].shape == (2, 16, 32)
  assert out["pooled"].shape == (2, 32)
  assert out["mlm_logits"].shape == (2, 3, 300)
  assert out["sentence_pair_logits"].shape == (2, 2)
  # The MLM head at position p equals the head applied to the full hidden state at p.
  full = apply(model, params, ids, masked_positions=jnp.tile(jnp.arange(16), (2, 1)))
  np.testing.assert_allclose(out["mlm_logits"][0, 1], full["mlm_logits"][0, 3], rtol=1e-5, atol=1e-5)


def test_encoder_ignores_padding_tokens():
  ids = jax.random.randint(jax.random.key(2), (1, 12), 5, 300)
  mask = jnp.array([[1] * 8 + [0] * 4])
  model, params = init(ENCODER, ids, attention_mask=mask)
  a = apply(model, params, ids, attention_mask=mask)["hidden"]
  b = apply(model, params, ids.at[0, 8:].set(7), attention_mask=mask)["hidden"]
  np.testing.assert_allclose(a[0, :8], b[0, :8], rtol=1e-5, atol=1e-5)


def test_decoder_is_causal():
  ids = jax.random.randint(jax.random.key(3), (1, 12), 5, 300)
  model, params = init(DECODER, ids)
  a = apply(model, params, ids)["lm_logits"]
  b = apply(model, params, ids.at[0, 6:].set(9))["lm_logits"]
  np.testing.assert_allclose(a[0, :6], b[0, :6], rtol=1e-5, atol=1e-5)
  assert not np.allclose(a[0, 6:], b[0, 6:])


def test_packed_documents_do_not_see_each_other():
  """Two documents packed in one row give the same logits as each run alone."""
  doc1 = jax.random.randint(jax.random.key(4), (1, 5), 5, 300)
  doc2 = jax.random.randint(jax.random.key(5), (1, 7), 5, 300)
  packed = jnp.concatenate([doc1, doc2], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 7])
  model, params = init(DECODER, packed, segment_ids=segments)
  both = apply(model, params, packed, segment_ids=segments)["lm_logits"]
  alone1 = apply(model, params, doc1)["lm_logits"]
  alone2 = apply(model, params, doc2)["lm_logits"]
  np.testing.assert_allclose(both[0, :5], alone1[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(both[0, 5:], alone2[0], rtol=1e-5, atol=1e-5)


def test_positions_restart_per_segment():
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
  np.testing.assert_array_equal(positions_from_segments(seg), [[0, 1, 2, 0, 1, 0, 1]])


def test_parameters_carry_logical_axis_names():
  ids = jnp.ones((1, 8), jnp.int32)
  boxed = jax.jit(lambda key: models.build(ENCODER).init(key, ids, masked_positions=ids[:, :2]))(
      jax.random.key(0))["params"]
  q = boxed["backbone"]["layer_0"]["attention"]["query"]["kernel"]
  assert q.names == ("embed", "heads", "kv")
  assert boxed["token_embed"]["embedding"].names == ("vocab", "embed")


@pytest.mark.parametrize("classifier", ["pooled", "first_token_mlp"])
def test_no_parameter_names_a_logical_axis_twice(classifier):
  """Mesh rules cannot place an array whose axes repeat a name (RoBERTa's classifier did)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  ids = jnp.ones((1, 8), jnp.int32)
  cfg = dict(ENCODER, heads=("classification",), classifier=classifier, num_labels=3)
  boxed = jax.jit(lambda key: models.build(cfg).init(key, ids))(jax.random.key(0))["params"]
  names = [leaf.names for leaf in jax.tree.leaves(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))]
  assert len(names) == len(jax.tree.leaves(nn.unbox(boxed)))  # every parameter is named
  repeated = [n for n in names if len({a for a in n if a}) < len([a for a in n if a])]
  assert not repeated, repeated


def test_bfloat16_compute_keeps_float32_params():
  cfg = dict(DECODER, dtype="bfloat16")
  ids = jnp.ones((1, 8), jnp.int32)
  model, params = init(cfg, ids)
  out = apply(model, params, ids)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert out["hidden"].dtype == jnp.bfloat16
  assert out["lm_logits"].dtype == jnp.float32


@pytest.mark.parametrize("bad, message", [
    (dict(kind="seq2seq"), "model.kind"),
    (dict(hidden_size=30), "divisible"),
    (dict(heads=("qa",)), "unknown model heads"),
    (dict(dtype="float13"), "is not a dtype"),
    (dict(hiden_size=3), "unknown model config keys"),
])
def test_bad_model_config(bad, message):
  with pytest.raises(UserError, match=message):
    models.build(dict(ENCODER, **bad))


@pytest.mark.parametrize("causal,packed,padded", [
    (False, False, True), (True, False, True), (True, True, True), (True, True, False),
    (False, False, False), (True, False, False)])
def test_cudnn_mask_form_matches_the_dense_mask(causal, packed, padded):
  """What cuDNN is given (lengths + causal flag, or mask + flag) means what XLA's mask means.

  Both forms run through XLA here (no GPU); only the `implementation` argument differs on a GPU.
  """
  keys = jax.random.split(jax.random.key(3), 3)
  q, k, v = (jax.random.normal(key, (3, 10, 2, 8)) for key in keys)
  padding = jnp.array([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6])
  segments = jnp.array([[1] * 6 + [2] * 4, [1] * 3 + [2] * 4 + [0] * 3, [1] * 4 + [0] * 6])
  if not padded:
    segments = jnp.array([[1] * 6 + [2] * 4] * 3)
  mask = layers.AttentionMask(padding if padded else None, segments if packed else None,
                              causal=causal)
  cudnn_kwargs = mask.kwargs("cudnn")
  assert ("mask" in cudnn_kwargs) == packed and cudnn_kwargs["is_causal"] == causal
  assert ("query_seq_lengths" in cudnn_kwargs) == (padded and not packed)
  reference = layers.attention_mask(padding if padded else jnp.ones_like(padding),
                                    segments if packed else None, causal)
  dense = jax.nn.dot_product_attention(q, k, v, implementation="xla", mask=reference)
  fused_form = jax.nn.dot_product_attention(q, k, v, implementation="xla", **cudnn_kwargs)
  xla_form = jax.nn.dot_product_attention(q, k, v, implementation="xla", **mask.kwargs("xla"))
  real = padding.astype(bool) if padded else jnp.ones(padding.shape, bool)
  np.testing.assert_allclose(xla_form[real], dense[real], atol=1e-6)
  np.testing.assert_allclose(fused_form[real], dense[real], atol=1e-6)


def test_attention_impl_defaults_to_cudnn_only_where_it_applies(monkeypatch):
  cfg = lambda **kw: models.ModelConfig(**{**ENCODER, **kw})
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.attention_impl(cfg(dtype="bfloat16")) == "cudnn"
  assert layers.attention_impl(cfg(dtype="float32")) == "xla"
  assert layers.attention_impl(cfg(dtype="bfloat16", attention_head_dim=12)) == "xla"
  assert layers.attention_impl(cfg(dtype="bfloat16", attention_impl="xla")) == "xla"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert layers.attention_impl(cfg(dtype="bfloat16")) == "xla"


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_changes_memory_not_results(policy):
  ids = jax.random.randint(jax.random.key(4), (2, 16), 5, 300)
  model, params = init(DECODER, ids)
  remat_model = models.build(models.ModelConfig(**{**DECODER, "remat": policy}))
  assert jax.tree.structure(jax.eval_shape(lambda: remat_model.init(jax.random.key(0), ids))[
      "params"]) == jax.tree.structure(params)

  def loss(m, p):
    return jnp.mean(m.apply({"params": p}, ids, deterministic=False,
                            rngs={"dropout": jax.random.key(5)})["lm_logits"] ** 2)
  # compiled, as training runs them (eager, the backward of each block ran op by op: a minute)
  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
  remat_value, remat_grads = jax.jit(jax.value_and_grad(lambda p: loss(remat_model, p)))(params)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               remat_grads, grads)
  def primitives(m):
    return {e.primitive.name for e in jax.make_jaxpr(lambda p: loss(m, p))(params).jaxpr.eqns}
  assert {"remat2", "checkpoint"} & primitives(remat_model)  # the rematerialisation is there
  assert not {"remat2", "checkpoint"} & primitives(model)


def test_exact_gelu_is_jax_gelu_to_round_off():
  """layers.gelu (erf form, one polynomial on CPU) against jax's erfc form, values and slopes."""
  x = jnp.linspace(-12.0, 12.0, 100_001)
  ours, theirs = layers.gelu(x), jax.nn.gelu(x, approximate=False)
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(layers.gelu))(x),
                             jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x),
                             rtol=1e-6, atol=1e-6)
