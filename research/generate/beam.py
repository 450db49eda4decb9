"""Beam search with a length penalty, in one `lax.while_loop` over fixed shapes.

Per prompt, `num_beams` running beams and the `num_beams` best finished hypotheses are kept. Each
step scores every (beam, token) continuation by the beam's summed log-probability, takes the best
`keep = max(2, 1 + #stop tokens) * num_beams`, and then
  - continuations that end (a stop token, or the budget is reached) among the first `num_beams`
    become finished hypotheses scored sum / new_tokens ** length_penalty, replacing worse ones;
  - the best `num_beams` continuations that do not end are the next running beams (the cache rows
    follow their parents).
A prompt is done when no running beam can beat its worst finished hypothesis (with the score it
would have now: transformers' default `early_stopping=False` heuristic), and decoding stops when
every prompt is done or the budget is out. These are the rules of transformers' beam search, so
with the same settings both return the same tokens. The result is the best finished hypothesis.
"""
import jax
import jax.numpy as jnp

from research.generate import scores as scores_lib
from research.generate.cached_model import CachedModel
from research.generate.sampling import seen_tokens
from research.generate.settings import Settings
from research.models import kv_cache

_NEVER = -1.0e9  # the score of a candidate that must not be chosen


def _gather(x, index):
  """x (batch, beams, ...) at `index` (batch, k) along the beams axis."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def decode(model: CachedModel, settings: Settings, params, prompt_ids, prompt_mask, *,
           stop_ids, pad_id: int):
  """Returns {'tokens': (batch, max_new_tokens) int32, the best hypothesis of each prompt (pad
  after its stop token), 'scores': (batch,) its length-penalised score}."""
  batch, beams, budget = prompt_ids.shape[0], settings.num_beams, settings.max_new_tokens
  keep = max(2, 1 + len(stop_ids)) * beams
  stops = jnp.asarray(stop_ids, jnp.int32)
  logits, cache = model.prefill(params, prompt_ids, prompt_mask)
  vocab = logits.shape[-1]
  # every beam starts from its prompt: rows b * beams .. b * beams + beams - 1 are prompt b's
  rows_mask = jnp.repeat(prompt_mask, beams, axis=0)
  state = dict(
      index=jnp.int32(0), logits=jnp.repeat(logits, beams, axis=0),
      cache=kv_cache.repeat_rows(cache, beams),
      seen=jnp.repeat(seen_tokens(prompt_ids, prompt_mask, vocab), beams, axis=0),
      running=jnp.full((batch, beams, budget), pad_id, jnp.int32),
      running_scores=jnp.zeros((batch, beams)).at[:, 1:].set(_NEVER),  # one live beam at first
      finished=jnp.full((batch, beams, budget), pad_id, jnp.int32),
      finished_scores=jnp.full((batch, beams), _NEVER),
      is_finished=jnp.zeros((batch, beams), bool),
      improvable=jnp.ones((batch, 1), bool), go=jnp.bool_(True))
  in_top = jnp.arange(keep) < beams

  def body(state):
    i = state["index"]
    log_probs = jax.nn.log_softmax(state["logits"], axis=-1)
    log_probs = scores_lib.penalize_repeats(log_probs, state["seen"], settings.repetition_penalty)
    totals = log_probs.reshape(batch, beams, vocab) + state["running_scores"][:, :, None]
    top_scores, top_index = jax.lax.top_k(totals.reshape(batch, beams * vocab), keep)
    parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    candidates = _gather(state["running"], parent).at[:, :, i].set(token)
    ends = jnp.isin(token, stops) | (i + 1 >= budget)  # (batch, keep)

    # the next running beams: the best continuations that do not end
    live_scores = top_scores + ends * _NEVER
    chosen = jax.lax.top_k(live_scores, beams)[1]
    running, running_scores = _gather(candidates, chosen), _gather(live_scores, chosen)
    rows = (jnp.arange(batch)[:, None] * beams + _gather(parent, chosen)).reshape(-1)

    # finished hypotheses: merge the ending continuations among the top `beams` into the best
    new_scores = top_scores / ((i + 1).astype(jnp.float32) ** settings.length_penalty)
    newly = ends & in_top[None, :]
    new_scores = new_scores + (~state["improvable"]) * _NEVER + (~newly) * _NEVER
    merged_scores = jnp.concatenate([state["finished_scores"], new_scores], axis=1)
    best = jax.lax.top_k(merged_scores, beams)[1]
    finished = _gather(jnp.concatenate([state["finished"], candidates], axis=1), best)
    finished_scores = _gather(merged_scores, best)
    is_finished = _gather(jnp.concatenate([state["is_finished"], newly], axis=1), best)

    # can a running beam still beat the worst finished hypothesis?
    best_running = running_scores[:, :1] / ((i + 1).astype(jnp.float32) **
                                            settings.length_penalty)
    worst_finished = jnp.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEVER)
    improvable = state["improvable"] & jnp.any(best_running > worst_finished, axis=-1,
                                               keepdims=True)
    go = jnp.any(improvable) & ~jnp.all(ends)

    cache = kv_cache.select_rows(state["cache"], rows)
    seen = state["seen"][rows].at[jnp.arange(batch * beams), running[:, :, i].reshape(-1)].set(
        True)
    logits, cache = model.step(params, cache, running[:, :, i].reshape(-1), rows_mask, i)
    return dict(index=i + 1, logits=logits, cache=cache, seen=seen, running=running,
                running_scores=running_scores, finished=finished, finished_scores=finished_scores,
                is_finished=is_finished, improvable=improvable, go=go)

  state = jax.lax.while_loop(lambda s: s["go"] & (s["index"] < budget), body, state)
  tokens = state["finished"][:, 0]
  # a stop token ends the hypothesis: pad after it (candidates carried the running beam's tail)
  stopped = jnp.cumsum(jnp.isin(tokens, stops), axis=1) - jnp.isin(tokens, stops) > 0
  return {"tokens": jnp.where(stopped, pad_id, tokens), "scores": state["finished_scores"][:, 0]}
