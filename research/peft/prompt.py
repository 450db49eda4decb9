"""Prompt tuning (Lester et al., 2021): learned soft-prompt embeddings before the tokens.

`research.models.transformer.Transformer` prepends `peft.num_virtual_tokens` vectors
(`prompt/embedding`, (num_virtual_tokens, hidden)) to the token embeddings, as HF PEFT does for
BERT-style models: the virtual tokens come first, at positions 0..n-1 (the real tokens shift to
n..; RoBERTa-style offsets are kept), with token type 0 and attention mask 1. The pooled output
reads position 0 (the first virtual token, as PEFT's models do); heads that read per-token outputs
see only the real tokens. The prompt starts as the token embeddings of `num_virtual_tokens`
vocabulary ids drawn uniformly at random (HF PEFT's 'SAMPLE_VOCAB' init; its 'RANDOM' is N(0, 1)),
drawn when the model is initialised: with `init.weights` that is before the weights load, so the
rows are those of the scratch embedding (random, N(0, 0.02)), not the pretrained ones.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class SoftPrompt(nn.Module):
  """Extends (embeddings, attention_mask, token_type_ids, positions) by the soft prompt in front."""
  cfg: "ModelConfig"
  token_embed: nn.Embed  # its rows initialise the prompt

  @nn.compact
  def __call__(self, embeddings, attention_mask, token_type_ids, positions):
    cfg, n = self.cfg, self.cfg.peft.num_virtual_tokens

    def from_vocabulary(rng, shape, dtype):
      ids = jax.random.randint(rng, shape[:1], 0, cfg.vocab_size)
      return jnp.asarray(self.token_embed.embedding, dtype)[ids]
    prompt = self.param("embedding", nn.with_logical_partitioning(from_vocabulary, (None, "embed")),
                        (n, cfg.hidden_size), cfg.param_dtype)
    batch = embeddings.shape[0]
    front = lambda a, value: jnp.concatenate(
        [jnp.full((batch, n), value, a.dtype), a], axis=1)
    embeddings = jnp.concatenate(
        [jnp.broadcast_to(prompt.astype(embeddings.dtype), (batch, n, cfg.hidden_size)),
         embeddings], axis=1)
    if attention_mask is not None:
      attention_mask = front(attention_mask, 1)
    prompt_positions = jnp.broadcast_to(cfg.position_offset + jnp.arange(n, dtype=positions.dtype),
                                        (batch, n))
    positions = jnp.concatenate([prompt_positions, positions + n], axis=1)
    return embeddings, attention_mask, front(token_type_ids, 0), positions
