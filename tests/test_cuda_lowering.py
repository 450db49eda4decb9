"""Our bf16 train step lowers for CUDA with cuDNN's fused attention in every layer.

No GPU here: `jax.jit(...).trace(...).lower(lowering_platforms=('cuda',))` builds the CUDA
program on the CPU. cuDNN's version check (which needs the library) is stubbed; everything else
(our attention's shapes, layouts, mask form, the backward pass) goes through JAX's real checks.
"""
import re

import jax
import numpy as np
import pytest

from research import bench, models, objectives
from research.train import optim
from research.train.step import TrainState, make_train_step


def lower_for_cuda(model_cfg, batch, monkeypatch):
  from jax._src.cudnn import fused_attention_stablehlo  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the default implementation choice
  model = models.build(model_cfg)
  objective = objectives.masked_lm() if model_cfg.kind == "encoder" else objectives.causal_lm()
  tx, lr = optim.build(bench.run_config(bench.workloads("bert-base-mlm-s128", True)[0], "float32"),
                       ())
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), batch["input_ids"], masked_positions=batch.get("masked_positions"))
                          )["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  state = jax.eval_shape(lambda p: TrainState.create(p, tx.init(p)), params)
  step = jax.jit(make_train_step(model, (objective,), tx, lr, jax.random.key(1)))
  return step.trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()


def cudnn_calls(text):
  return re.findall(r"custom_call @__cudnn\$(\w+)", text)


CFG = dict(vocab_size=512, hidden_size=128, num_layers=3, num_heads=2, mlp_dim=256, max_len=128,
           dtype="bfloat16")


@pytest.mark.parametrize("padded", [True, False])
def test_encoder_attention_is_fused_with_sequence_lengths(monkeypatch, padded):
  b, t = 4, 128
  batch = {"input_ids": np.ones((b, t), np.int32), "token_type_ids": np.zeros((b, t), np.int32),
           "masked_positions": np.ones((b, 16), np.int32),
           "masked_ids": np.ones((b, 16), np.int32), "masked_weights": np.ones((b, 16), np.float32),
           "unigram_top": np.zeros(b, np.int32)}
  if padded:
    batch["attention_mask"] = (np.arange(t) < 100).astype(np.int32)[None].repeat(b, 0)
  text = lower_for_cuda(models.ModelConfig(kind="encoder", heads=("mlm",), **CFG), batch,
                        monkeypatch)
  calls = cudnn_calls(text)
  assert calls.count("fmhaSoftmax") == 3 and calls.count("fmhaSoftmaxBackward") == 3, calls
  mask_types = re.findall(r"mask_type\\22: \\22(\w+)\\22", text)
  # Sequence lengths, not a mask tensor; nothing at all without padding (the benchmark's rows).
  assert mask_types == ["PADDING" if padded else "NO_MASK"] * 6, mask_types


@pytest.mark.parametrize("rows, forward, mask_type", [
    ("one_document", "fmhaSoftmax", "CAUSAL"),  # no attention_mask: as in the benchmark
    ("padded", "fmhaSoftmax", "PADDING_CAUSAL"),  # sequence lengths
    ("packed", "fmhaScaleBiasSoftmax", "CAUSAL"),  # the document mask goes in as a bias
])
def test_decoder_attention_is_fused_and_causal(monkeypatch, rows, forward, mask_type):
  b, t = 2, 128
  batch = {"input_ids": np.ones((b, t), np.int32), "unigram_top": np.zeros(b, np.int32)}
  if rows == "padded":
    batch["attention_mask"] = (np.arange(t) < 100).astype(np.int32)[None].repeat(b, 0)
  if rows == "packed":
    batch["segment_ids"] = np.repeat([[1, 2]], t // 2, axis=1).repeat(b, 0).astype(np.int32)
  cfg = models.ModelConfig(kind="decoder", heads=("lm",), type_vocab_size=0, pooler=False, **CFG)
  text = lower_for_cuda(cfg, batch, monkeypatch)
  calls = cudnn_calls(text)
  assert calls.count(forward) == 3 and calls.count(forward + "Backward") == 3, calls
  mask_types = re.findall(r"mask_type\\22: \\22(\w+)\\22", text)
  assert mask_types == [mask_type] * 6, mask_types


def test_float32_compute_stays_on_xla(monkeypatch):
  b, t = 2, 64
  batch = {"input_ids": np.ones((b, t), np.int32), "attention_mask": np.ones((b, t), np.int32),
           "segment_ids": np.ones((b, t), np.int32), "unigram_top": np.zeros(b, np.int32)}
  cfg = models.ModelConfig(kind="decoder", heads=("lm",), type_vocab_size=0, pooler=False,
                           **{**CFG, "dtype": "float32"})
  assert not cudnn_calls(lower_for_cuda(cfg, batch, monkeypatch))
