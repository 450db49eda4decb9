"""Greedy decoding and sampling: one token per row per step, in one `lax.while_loop`.

The loop runs until every row has produced a stop token or `max_new_tokens` are out; a finished
row gets `pad_id` from then on. Sampling draws step i's tokens with `fold_in(key, i)`, so the same
seed, prompts and batch size give the same tokens on any mesh. With `on_token`, every step's tokens
go to the host as they are chosen (`io_callback`, ordered: `on_token(*on_token_args, index,
tokens)`, the args traced operands): that is how a single prompt streams.
"""
import jax
import jax.numpy as jnp
from jax.experimental import io_callback

from research.generate import scores as scores_lib
from research.generate.cached_model import CachedModel
from research.generate.settings import Settings


def seen_tokens(prompt_ids, prompt_mask, vocab_size: int):
  """(batch, vocab) bool: the real prompt tokens of each row (for the repetition penalty)."""
  rows = jnp.arange(prompt_ids.shape[0])[:, None]
  return jnp.zeros((prompt_ids.shape[0], vocab_size), bool).at[rows, prompt_ids].max(
      prompt_mask.astype(bool))


def decode(model: CachedModel, settings: Settings, params, prompt_ids, prompt_mask, key, *,
           stop_ids, pad_id: int, on_token=None, on_token_args=(), keep_logits: bool = False):
  """Returns {'tokens': (batch, max_new_tokens) int32, pad after a row's stop token,
  'logits': (batch, max_new_tokens, vocab) raw next-token logits (only with `keep_logits`)}."""
  batch, budget = prompt_ids.shape[0], settings.max_new_tokens
  logits, cache = model.prefill(params, prompt_ids, prompt_mask)
  vocab = logits.shape[-1]
  stops = jnp.asarray(stop_ids, jnp.int32)
  state = dict(
      index=jnp.int32(0), logits=logits, cache=cache,
      tokens=jnp.full((batch, budget), pad_id, jnp.int32), done=jnp.zeros((batch,), bool),
      seen=seen_tokens(prompt_ids, prompt_mask, vocab),
      kept=jnp.zeros((batch, budget if keep_logits else 0, vocab), jnp.float32))

  def choose(state):
    scores = scores_lib.penalize_repeats(state["logits"], state["seen"],
                                         settings.repetition_penalty)
    if settings.strategy == "greedy":
      return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    warped = scores_lib.for_sampling(scores, settings)
    return jax.random.categorical(jax.random.fold_in(key, state["index"]), warped).astype(jnp.int32)

  def body(state):
    i = state["index"]
    token = jnp.where(state["done"], pad_id, choose(state))
    if keep_logits:
      state["kept"] = state["kept"].at[:, i].set(state["logits"])
    if on_token is not None:
      io_callback(on_token, None, *on_token_args, i, token, ordered=True)
    done = state["done"] | jnp.isin(token, stops)
    logits, cache = model.step(params, state["cache"], token, prompt_mask, i)
    return dict(index=i + 1, logits=logits, cache=cache,
                tokens=state["tokens"].at[:, i].set(token), done=done,
                seen=state["seen"].at[jnp.arange(batch), token].set(True), kept=state["kept"])

  def running(state):
    return (state["index"] < budget) & ~jnp.all(state["done"])

  state = jax.lax.while_loop(running, body, state)
  out = {"tokens": state["tokens"]}
  if keep_logits:
    out["logits"] = state["kept"]
  return out
