"""research.perf's model FLOPs: unchanged for BERT and GPT-2 shapes (the old formula, exactly);
grouped-query attention and SwiGLU counted from the model's own matrices (the Llama-style 1B)."""
import math

import jax

from research import config_lib, models, perf
from research.run_shape import shape_config
from research.train import state as state_lib


def model_of(config):
  config, _ = shape_config(config)
  return config, models.ModelConfig.of_run(config)


def old_forward_flops(cfg, T, P):
  """The formula before grouped-query attention and SwiGLU were counted: 4d^2 and 2df a token."""
  d, f, L, V = cfg.hidden_size, cfg.mlp_dim, cfg.num_layers, cfg.vocab_size
  flops = L * (2 * T * 4 * d * d + 2 * T * 2 * d * f + 2 * 2 * T * T * d)
  if "mlm" in cfg.heads:
    flops += 2 * P * (d * d + d * V)
  if "lm" in cfg.heads:
    flops += 2 * T * d * V
  return float(flops)


def test_bert_and_gpt2_figures_are_the_old_formula_exactly():
  for name, arg in (("mlm", "size=base"), ("clm", "size=base"), ("clm", "size=large")):
    config, cfg = model_of(config_lib.load_config_file(name, arg))
    T, P = config.data.seq_len, state_lib.max_predictions(config)
    assert not cfg.gated_mlp and cfg.kv_heads == cfg.num_heads
    assert perf.forward_flops_per_sequence(cfg, T, P) == old_forward_flops(cfg, T, P)
    assert (perf.train_flops_per_step(cfg, T, 512, P) ==
            3.0 * 512 * old_forward_flops(cfg, T, P))


def test_llama_flops_count_every_matrix_of_the_model():
  """2 FLOPs per weight of each block's matrices per token (counted from the model's abstract
  parameters: q, k, v, out, gate, up, down), attention's scores and sum, the tied LM head."""
  config, cfg = model_of(config_lib.load_config_file("clm", "size=llama_1b"))
  T = config.data.seq_len
  inputs = state_lib.dummy_inputs(config)
  params = jax.eval_shape(lambda rng: models.build(cfg).init(
      {"params": rng, "dropout": rng}, inputs.pop("input_ids"), **inputs)["params"],
      jax.random.key(0))
  matrices = [(jax.tree_util.keystr(path), x.shape) for path, x in
              jax.tree_util.tree_leaves_with_path(params)
              if "layer_" in jax.tree_util.keystr(path) and len(x.shape) >= 2]
  names = sorted({p.split("['layer_0']")[1] for p, _ in matrices if "['layer_0']" in p})
  assert len(names) == 7, names  # query, key, value, out, gate, up, down kernels
  block_weights = sum(math.prod(s) for _, s in matrices)
  H, h, L, d, V = cfg.num_heads, cfg.head_dim, cfg.num_layers, cfg.hidden_size, cfg.vocab_size
  assert (L, d, H, cfg.kv_heads, h, cfg.mlp_dim, V) == (16, 2048, 32, 8, 64, 8192, 128256)
  expected = 2 * T * block_weights + L * 4 * T * T * H * h + 2 * T * d * V
  assert perf.forward_flops_per_sequence(cfg, T) == float(expected)
  # What the old formula missed: 2.5d^2 for attention's projections instead of 4d^2, 3df for
  # SwiGLU instead of 2df.
  assert block_weights == L * (2.5 * d * d + 3 * d * cfg.mlp_dim)
