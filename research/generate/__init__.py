"""Text generation with our decoders (GPT-2 and Llama style): KV-cache decoding under `jax.jit`.

  from research import generate
  texts = generate.generate(params, model_cfg, tokenizer, ["The market", "Rain fell"],
                            generate.Settings(max_new_tokens=32, strategy="sample", top_p=0.9))

`generate` takes text and returns each prompt's completion (the text after the prompt, without
the stop token); `generate_ids` works on token ids and returns arrays. Prompts are left-padded
to a multiple of `PROMPT_BUCKET` tokens (one compilation serves every prompt up to that length),
prefilled in one call, then decoded one token a step inside one `lax.while_loop`
(`research.generate.sampling` for greedy and sampling, `research.generate.beam` for beam search)
with static shapes: a cache of prompt + `max_new_tokens` slots (`research.models.kv_cache`).
With a `mesh` the parameters are placed by the model's logical axis rules and the batch and the
cache are split over the data-parallel axes, as in training. `load(workdir)` reads what a run of
ours saved. The command line is `python -m research.generate`.
"""
import functools
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.generate import beam, sampling
from research.generate.cached_model import CachedModel, decoding_config
from research.generate.settings import STRATEGIES, Settings
from research.models.config import ModelConfig

PROMPT_BUCKET = 16  # prompts are left-padded to a multiple of this many tokens


def check_model(cfg: ModelConfig):
  """One line unless `cfg` is a decoder with a causal-LM ('lm') head."""
  if cfg.kind != "decoder" or not any(s.kind == "lm" for s in cfg.head_specs):
    raise UserError(f"generation needs a decoder with a causal-LM head; this model is an "
                    f"{cfg.kind} with heads {list(cfg.heads)}")


def bucketed_length(longest: int, cfg: ModelConfig, settings: Settings) -> int:
  """The padded prompt length; one line if a prompt and the budget exceed the model's context
  (`model.max_len` positions, for learned and rotary positions alike)."""
  if longest + settings.max_new_tokens > cfg.max_len:
    raise UserError(f"a prompt of {longest} tokens + max_new_tokens {settings.max_new_tokens} "
                    f"exceeds the model's context of {cfg.max_len} tokens")
  padded = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
  return min(padded, cfg.max_len - settings.max_new_tokens)


class _TokenSinks:
  """Where streamed tokens go. The compiled loop is shared by every call of one shape, so it
  cannot hold a call's callback: it passes the call's sink number (a traced input) to
  `forward`, which may run on another thread, and that finds the call's callback here."""

  def __init__(self):
    self.lock, self.sinks, self.next = threading.Lock(), {}, 1

  def open(self, callback) -> int:
    with self.lock:
      number, self.next = self.next, self.next + 1
      self.sinks[number] = callback
      return number

  def close(self, number: int):
    with self.lock:
      self.sinks.pop(number, None)

  def forward(self, number, index, tokens):
    callback = self.sinks.get(int(number))
    if callback is not None:
      callback(int(index), np.asarray(tokens))


_SINKS = _TokenSinks()


@functools.lru_cache(maxsize=64)
def _compiled(cfg: ModelConfig, settings: Settings, prompt_length: int, stop_ids: tuple,
              pad_id: int, stream: bool, keep_logits: bool):
  model = CachedModel(decoding_config(cfg), prompt_length, settings.max_new_tokens)
  if settings.strategy == "beam":
    return jax.jit(lambda params, ids, mask, key, sink: beam.decode(
        model, settings, params, ids, mask, stop_ids=stop_ids, pad_id=pad_id))
  return jax.jit(lambda params, ids, mask, key, sink: sampling.decode(
      model, settings, params, ids, mask, key, stop_ids=stop_ids, pad_id=pad_id,
      on_token=_SINKS.forward if stream else None, on_token_args=(sink,),
      keep_logits=keep_logits))


@functools.lru_cache(maxsize=8)
def param_shardings(cfg: ModelConfig, mesh, rules: tuple):
  """The parameters' NamedShardings on `mesh` under the logical axis `rules` (as training's).
  Cached: an evaluation decodes batch after batch with the same model and mesh."""
  from research import sharding  # pylint: disable=g-import-not-at-top
  from research.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  ids = jnp.zeros((1, 8), jnp.int32)
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), ids)["params"])
    return sharding.shardings_of(boxed, mesh, rules)


def generate_ids(params, model_cfg: ModelConfig, prompts, settings: Settings = Settings(), *,
                 stop_ids=(), pad_id: int = 0, mesh=None, rules=None, on_token=None,
                 keep_logits: bool = False) -> dict:
  """Decodes every prompt (a list of token-id lists) in one batch.

  Returns host arrays: 'tokens' (batch, max_new_tokens), `pad_id` after a row's stop token;
  'lengths' (batch,) tokens up to and including the stop token; with `keep_logits` (greedy and
  sampling) 'logits' (batch, max_new_tokens, vocab), each step's raw next-token logits.
  `on_token(index, tokens)` (greedy and sampling) is called with every step's tokens as soon as
  they are chosen. `stop_ids` end a row (the caller adds the tokenizer's end-of-text).
  """
  check_model(model_cfg)
  if not prompts or any(len(p) == 0 for p in prompts):
    raise UserError("every prompt needs at least one token")
  stop_ids = tuple(sorted({int(t) for t in stop_ids} | set(settings.stop_tokens)))
  length = bucketed_length(max(len(p) for p in prompts), model_cfg, settings)
  rows = len(prompts)
  if mesh is not None:  # the batch splits evenly over the data-parallel devices
    from research import sharding  # pylint: disable=g-import-not-at-top
    ways = sharding.data_parallel_size(mesh)
    rows = -(-rows // ways) * ways
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for r in range(rows):
    prompt = prompts[min(r, len(prompts) - 1)]  # extra rows repeat the last prompt
    ids[r, length - len(prompt):], mask[r, length - len(prompt):] = prompt, 1
  fn = _compiled(model_cfg, settings.compiled_key, length, stop_ids, int(pad_id),
                 on_token is not None, keep_logits)
  key = jax.random.key(settings.seed)
  sink = _SINKS.open(on_token) if on_token is not None else 0
  try:
    if mesh is None:
      out = fn(params, ids, mask, key, sink)
    else:
      from research import sharding  # pylint: disable=g-import-not-at-top
      rules = tuple(rules) if rules is not None else sharding.DEFAULT_RULES
      params = jax.device_put(params, param_shardings(model_cfg, mesh, rules))
      ids, mask = (jax.device_put(a, sharding.batch_sharding(mesh)) for a in (ids, mask))
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = fn(params, ids, mask, key, sink)
    out = jax.tree.map(np.asarray, out)
  finally:
    _SINKS.close(sink)
  out = {k: v[:len(prompts)] for k, v in out.items()}
  out["lengths"] = completion_lengths(out["tokens"], stop_ids)
  return out


def completion_lengths(tokens, stop_ids) -> np.ndarray:
  """Tokens of each row up to and including its first stop token (all if none)."""
  stops = np.isin(tokens, np.asarray(stop_ids, np.int32)) if stop_ids else np.zeros_like(
      tokens, bool)
  first = np.where(stops.any(axis=1), stops.argmax(axis=1) + 1, tokens.shape[1])
  return first.astype(np.int32)


def encode(tokenizer, prompts) -> list[list[int]]:
  """Token ids of each prompt string (no special tokens); an empty prompt is the end-of-text
  token, which is how GPT-2 style models start a text."""
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  eos = max(tokenizer_lib.SpecialIds.of(tokenizer).eos, 0)
  return [tokenizer.encode(p, add_special_tokens=False).ids or [eos] for p in prompts]


def check_prompts(tokenizer, prompts, model_cfg: ModelConfig, settings: Settings):
  """One line if a prompt and the budget do not fit the model's context (before any decoding)."""
  longest = max((len(ids) for ids in encode(tokenizer, prompts)), default=0)
  bucketed_length(longest, model_cfg, settings)


def generate(params, model_cfg: ModelConfig, tokenizer, prompts, settings: Settings = Settings(),
             *, mesh=None, rules=None, batch_size: int = 16, on_text=None) -> list[str]:
  """The completion of each prompt string, in order, `batch_size` prompts per compiled call.

  `tokenizer` is a `tokenizers.Tokenizer`; its end-of-text token stops a row. `on_text(text)`
  (greedy and sampling, one prompt) receives the completion piece by piece as it is generated
  (the command line's streaming)."""
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  special = tokenizer_lib.SpecialIds.of(tokenizer)
  stop_ids = (special.eos,) if special.eos >= 0 else ()
  encoded = encode(tokenizer, prompts)
  on_token = None
  if on_text is not None:
    if len(prompts) != 1 or settings.strategy == "beam":
      raise UserError("streaming takes one prompt and greedy or sample decoding")
    on_token = _Streamer(tokenizer, stop_ids, on_text)
  texts = []
  for start in range(0, len(encoded), batch_size):
    out = generate_ids(params, model_cfg, encoded[start:start + batch_size], settings,
                       stop_ids=stop_ids, pad_id=special.pad, mesh=mesh, rules=rules,
                       on_token=on_token)
    for tokens, length in zip(out["tokens"], out["lengths"]):
      kept = [int(t) for t in tokens[:length] if int(t) not in stop_ids]
      texts.append(tokenizer.decode(kept))
  if on_token is not None:
    on_token.finish(texts[0])
  return texts


class _Streamer:
  """on_token for one prompt: hands `on_text` the text each new token adds (byte-level BPE may
  need several tokens for one character, so it decodes the whole completion each time)."""

  def __init__(self, tokenizer, stop_ids, on_text):
    self.tokenizer, self.stop_ids, self.on_text = tokenizer, set(stop_ids), on_text
    self.tokens, self.shown, self.stopped = [], "", False

  def __call__(self, index, tokens):
    del index
    token = int(tokens[0])
    if self.stopped or token in self.stop_ids:
      self.stopped = True
      return
    self.tokens.append(token)
    text = self.tokenizer.decode(self.tokens)
    if text.startswith(self.shown) and not text.endswith("\ufffd"):
      self.on_text(text[len(self.shown):])
      self.shown = text

  def finish(self, text: str):
    """Hands over what is left of the final `text` (pieces held back as incomplete bytes)."""
    if text.startswith(self.shown) and len(text) > len(self.shown):
      self.on_text(text[len(self.shown):])


def load_model(workdir: str):
  """(model_cfg, tokenizer) of a decoder run of ours (config.json, tokenizer.json); one line if
  it is not a decoder run. Nothing heavy is read: bad input is refused before the weights load."""
  import os  # pylint: disable=g-import-not-at-top
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  model_cfg = ModelConfig.of_run(checkpoint.workdir_config(workdir))
  check_model(model_cfg)
  path = os.path.join(workdir, "tokenizer.json")
  if not os.path.exists(path):
    raise UserError(f"{workdir!r} has no tokenizer.json")
  return model_cfg, tokenizer_lib.from_file(path)


def merged_adapters(params, model_cfg: ModelConfig):
  """(params, model_cfg) with LoRA, AdaLoRA or IA3 adapters folded into the kernels: the same
  function as a plain model, which decodes at the plain model's speed. Other models as they are."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from research.peft import ia3, lora  # pylint: disable=g-import-not-at-top
  from research.peft.config import PeftConfig  # pylint: disable=g-import-not-at-top
  method = model_cfg.peft.method
  if method in ("lora", "adalora"):
    params = lora.merge(params, model_cfg.peft)[0]
  elif method == "ia3":
    params = ia3.merge(params)
  else:
    return params, model_cfg
  return params, dataclasses.replace(model_cfg, peft=PeftConfig())


def load(workdir: str):
  """(params, model_cfg, tokenizer) of a decoder run of ours: its best (else latest) parameters
  (adapters merged: `merged_adapters`), its model and its tokenizer."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  model_cfg, tokenizer = load_model(workdir)
  params, model_cfg = merged_adapters(checkpoint.workdir_params(workdir, best=True), model_cfg)
  return params, model_cfg, tokenizer


__all__ = ["STRATEGIES", "Settings", "check_model", "check_prompts", "completion_lengths",
           "encode", "generate", "generate_ids", "load", "load_model", "merged_adapters",
           "param_shardings"]
