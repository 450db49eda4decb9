"""Bottleneck adapters (Houlsby et al., 2019): h + up(act(down(h))) on a sublayer's output.

`research.models.layers.TransformerBlock` applies one after its attention (`adapter_attention/`)
and one after its MLP (`adapter_mlp/`), to the sublayer's output before the residual add, in
post-LN (BERT) and pre-LN (GPT-2, Llama) blocks alike. `down` (hidden -> `peft.adapter_size`)
starts small and random, `up` (back to hidden) at zero, so step 0 is the base model.
"""
import flax.linen as nn

NAMES = ("adapter_attention", "adapter_mlp")


class Adapter(nn.Module):
  """h + up(act(down(h))); `act` is the model's MLP activation."""
  cfg: "ModelConfig"  # research.models.config (the model imports this module)
  activation: callable

  @nn.compact
  def __call__(self, h):
    cfg = self.cfg

    def dense(features, name, kernel_init, axes):
      return nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             axes[1:]),
                      name=name)
    down = dense(cfg.peft.adapter_size, "down", nn.initializers.normal(0.02), ("embed", None))
    up = dense(cfg.hidden_size, "up", nn.initializers.zeros_init(), (None, "embed"))
    return h + up(self.activation(down(h))).astype(h.dtype)
