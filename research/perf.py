"""Training FLOPs and model-FLOPs utilisation (MFU); a compiled step's memory (`compiled_bytes`).

FLOPs of one training step = 3 x forward FLOPs (backward costs twice the forward), counting a
multiply-add as 2 FLOPs and only matrix multiplications. Forward FLOPs per sequence of length T,
hidden d, MLP width f, L layers, vocabulary V, H query heads and K key/value heads of size h:
  per layer   2T(2dHh + 2dKh)  query and output projections (d x Hh each), key and value (d x Kh
                               each; K < H: grouped-query attention); 2T(4d^2) when Hh = d, K = H
            + 2T(2df)          MLP (up, down); with a gated MLP (SwiGLU) 2T(3df): gate, up, down
            + 2(2T^2 Hh)       attention scores and weighted sum (causal attention counted in
                               full, as PaLM's appendix B does, so MFU is comparable across models)
  MLM head    2P(d^2 + dV) on the P = max_predictions gathered positions only
  LM head     2T dV
Recomputation (remat) is not counted: this is *model* FLOPs utilisation.
MFU = FLOPs per step x steps per second / (peak FLOP/s per device x devices). Peaks are dense
bf16 figures from vendor datasheets; set `config.logging.peak_tflops` to override (e.g. for a
chip not in the table, or float32 compute). On CPU no peak is known and MFU is reported as null.
"""
import jax

# Dense bf16 peak FLOP/s per device, matched against `device.device_kind` (first match wins, so
# a name comes before the names it contains). TPU device kinds: v5e is 'TPU v5 lite', v5p is
# 'TPU v5', v6e (Trillium) is 'TPU v6 lite'.
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("A10", 125e12), ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12),
)


def forward_flops_per_sequence(model_cfg, seq_len: int, max_predictions: int = 0) -> float:
  d, f, L, V, T = (model_cfg.hidden_size, model_cfg.mlp_dim, model_cfg.num_layers,
                   model_cfg.vocab_size, seq_len)
  query_width = model_cfg.num_heads * model_cfg.head_dim  # Hh
  kv_width = model_cfg.kv_heads * model_cfg.head_dim  # Kh
  projections = 2 * d * query_width + 2 * d * kv_width
  mlp = (3 if model_cfg.gated_mlp else 2) * d * f
  flops = L * (2 * T * projections + 2 * T * mlp + 2 * 2 * T * T * query_width)
  if "mlm" in model_cfg.heads:
    flops += 2 * max_predictions * (d * d + d * V)
  if "lm" in model_cfg.heads:
    flops += 2 * T * d * V
  return float(flops)


def train_flops_per_step(model_cfg, seq_len: int, batch_size: int, max_predictions: int = 0):
  return 3.0 * batch_size * forward_flops_per_sequence(model_cfg, seq_len, max_predictions)


def peak_flops_per_device(override_tflops: float = 0.0, device=None):
  """The configured peak if set, else the table's entry for this device kind, else None."""
  if override_tflops:
    return override_tflops * 1e12
  return peak_flops_of_kind((device or jax.devices()[0]).device_kind)


def peak_flops_of_kind(device_kind: str):
  """The table's peak FLOP/s for a `device_kind` (e.g. 'TPU v5 lite'), else None."""
  return next((peak for name, peak in PEAK_FLOPS if name.lower() in device_kind.lower()), None)


def compiled_bytes(compiled) -> int | None:
  """Per-device bytes a compiled step holds at once: its arguments, its outputs (less those that
  reuse a donated argument's buffer) and its temporaries; None without XLA's statistics."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
          + stats.temp_size_in_bytes)
