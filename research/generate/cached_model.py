"""The decoder as incremental decoding calls it: a prefill over the prompts, then one token a step,
both reading and writing the key/value cache (`research.models.kv_cache`).

Prompts come left-padded (batch, prompt_length) with a 0/1 mask: every row's last prompt token
sits in the same slot, so one step serves the whole batch. Positions count each row's real tokens
(transformers does the same for left-padded batches), so padding changes no output. The cache
holds `virtual + prompt_length + max_new_tokens` slots: a soft prompt's virtual tokens (prompt
tuning) first, then the prompts, then the generated tokens.
"""
import dataclasses

import jax.numpy as jnp

from research.models import kv_cache
from research.models.config import ModelConfig
from research.models.transformer import Transformer


def decoding_config(cfg: ModelConfig) -> ModelConfig:
  """The model as decoding runs it: no activation recomputation (there is no backward pass)."""
  return dataclasses.replace(cfg, remat="none")


def lm_logits_key(cfg: ModelConfig) -> str:
  names = [spec.name for spec in cfg.head_specs if spec.kind == "lm"]
  return f"{names[0]}_logits"


@dataclasses.dataclass(frozen=True)
class CachedModel:
  """`prefill` then `step`s of one model over a batch of left-padded prompts."""
  cfg: ModelConfig
  prompt_length: int
  max_new_tokens: int

  @property
  def virtual(self) -> int:
    peft = self.cfg.peft
    return peft.num_virtual_tokens if peft.method == "prompt" else 0

  @property
  def cache_length(self) -> int:
    return self.virtual + self.prompt_length + self.max_new_tokens

  def valid_slots(self, prompt_mask):
    """(batch, cache_length) bool: the cache slots that hold real tokens (not left padding)."""
    batch = prompt_mask.shape[0]
    return jnp.concatenate([jnp.ones((batch, self.virtual), bool), prompt_mask.astype(bool),
                            jnp.ones((batch, self.max_new_tokens), bool)], axis=1)

  def _apply(self, params, cache, input_ids, positions, step):
    variables = {"params": params}
    if cache is not None:
      variables[kv_cache.COLLECTION] = cache
    outputs, updated = Transformer(self.cfg).apply(
        variables, input_ids, positions=positions, decode=step, mutable=[kv_cache.COLLECTION])
    return outputs[lm_logits_key(self.cfg)][:, -1], updated[kv_cache.COLLECTION]

  def prefill(self, params, prompt_ids, prompt_mask):
    """(next-token logits (batch, vocab) after each prompt, the new cache)."""
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    step = kv_cache.DecodeStep(jnp.int32(0), self.valid_slots(prompt_mask), prefill=True)
    return self._apply(params, None, prompt_ids, positions, step)

  def step(self, params, cache, tokens, prompt_mask, index):
    """Feeds `tokens` (batch,), the `index`-th generated token of each row (0-based); returns
    (next-token logits, cache)."""
    positions = (prompt_mask.sum(axis=1) + index)[:, None]
    slot = self.virtual + self.prompt_length + index
    step = kv_cache.DecodeStep(jnp.asarray(slot, jnp.int32), self.valid_slots(prompt_mask))
    return self._apply(params, cache, tokens[:, None], positions, step)


def uncached_logits(cfg: ModelConfig, params, prompt_ids, prompt_mask, generated):
  """Reference: the next-token logits after each prefix of `generated` (batch, steps), by running
  the whole sequence through the model without a cache. (batch, steps, vocab)."""
  ids = jnp.concatenate([prompt_ids, generated], axis=1)
  mask = jnp.concatenate([prompt_mask, jnp.ones_like(generated)], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  outputs = Transformer(decoding_config(cfg)).apply({"params": params}, ids, attention_mask=mask,
                                                    positions=positions)
  logits = outputs[lm_logits_key(cfg)]
  return logits[:, prompt_ids.shape[1] - 1:-1]

