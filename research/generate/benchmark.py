r"""Generation speed: our KV-cache decoding against transformers' `generate` (PyTorch), same model.

  python -m research.generate.benchmark [--shapes=runlocal,6x512] [--batches=1,16]
                                        [--new_tokens=128] [--repeats=3] [--flat]

Each shape is a GPT-2 style decoder with random weights (initialised as for training), exported
to transformers with `research.convert.hf` so both sides run the same weights; float32 on the
CPU, greedy, a 32-token prompt, exactly `--new_tokens` new tokens (no stop token). The two run
interleaved (ours, theirs, ours, ...) `--repeats` times after one untimed warm-up each (ours
compiles there); a row prints the median tokens/s (batch x new tokens / wall seconds) of each
side, their spread (min-max) and ratio = ours / theirs. torch uses as many threads as the machine
has cores, as XLA does.

--flat: per-token time across the context. One prompt of 64 tokens decoded to position 960 (the
runlocal shape, batch 1), with every token's arrival time taken on the host (our `on_token`,
their streamer); prints the median step time over positions 64-127 and 896-959 and the later
over the earlier, for both sides. Ours attends to the whole static cache at every step, so its
step time does not grow with the position.
"""
import json
import os
import statistics
import tempfile
import time

from absl import app, flags

SHAPES = {  # name: (num_layers, hidden_size, num_heads, mlp_dim)
    "runlocal": None,  # configs/clm.py:runlocal's model
    "6x512": (6, 512, 8, 2048),
}
VOCAB = 8192  # the runlocal vocabulary, for both shapes
PROMPT = 32

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_list("shapes", list(SHAPES), f"Model shapes among {list(SHAPES)}.")
  flags.DEFINE_list("batches", ["1", "16"], "Batch sizes.")
  flags.DEFINE_integer("new_tokens", 128, "New tokens per prompt.")
  flags.DEFINE_integer("repeats", 3, "Timed runs of each side (after a warm-up).")
  flags.DEFINE_bool("flat", False, "Also measure the per-token time early and late in the context.")
  flags.DEFINE_list("flat_positions", ["64", "960"], "--flat: the prompt length and the last "
                    "position decoded to.")


def model_config(shape: str):
  from research import config_lib  # pylint: disable=g-import-not-at-top
  from research.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  section = config_lib.model("decoder", "tiny", dtype="float32").to_dict()
  section.update(vocab_size=VOCAB, heads=("lm",), max_len=1024)
  if SHAPES[shape] is not None:
    layers, hidden, heads, mlp = SHAPES[shape]
    section.update(num_layers=layers, hidden_size=hidden, num_heads=heads, mlp_dim=mlp)
  return ModelConfig.from_dict(section)


def both_models(shape: str, directory: str):
  """(our config, our params, the transformers model) with the same random weights."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  cfg = model_config(shape)
  params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(np.asarray, params)
  hf.save_pretrained(cfg, params, directory)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
  return cfg, params, theirs


def prompts(batch: int, length: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.default_rng(seed).integers(1, VOCAB, size=(batch, length)).tolist()


def ours_fn(cfg, params, new_tokens: int):
  from research import generate  # pylint: disable=g-import-not-at-top
  settings = generate.Settings(max_new_tokens=new_tokens)
  return lambda batch, on_token=None: generate.generate_ids(params, cfg, batch, settings,
                                                            on_token=on_token)["tokens"]


def theirs_fn(model, new_tokens: int):
  import torch  # pylint: disable=g-import-not-at-top

  def run(batch, streamer=None):
    with torch.no_grad():
      return model.generate(input_ids=torch.tensor(batch), do_sample=False,
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            pad_token_id=0, eos_token_id=None, streamer=streamer)
  return run


def timed(fn, *args) -> float:
  start = time.perf_counter()
  fn(*args)
  return time.perf_counter() - start


def speed_row(shape: str, batch: int, new_tokens: int, repeats: int, models) -> dict:
  cfg, params, model = models
  ours, theirs = ours_fn(cfg, params, new_tokens), theirs_fn(model, new_tokens)
  rows = prompts(batch, PROMPT)
  ours(rows)  # compiles
  theirs(rows)
  times = {"ours": [], "theirs": []}
  for _ in range(repeats):
    times["ours"].append(timed(ours, rows))
    times["theirs"].append(timed(theirs, rows))
  tokens = batch * new_tokens
  speed = {side: sorted(tokens / t for t in ts) for side, ts in times.items()}
  return {"shape": shape, "batch": batch, "new_tokens": new_tokens,
          "ours_tokens_per_s": round(statistics.median(speed["ours"]), 1),
          "ours_spread": [round(speed["ours"][0], 1), round(speed["ours"][-1], 1)],
          "theirs_tokens_per_s": round(statistics.median(speed["theirs"]), 1),
          "theirs_spread": [round(speed["theirs"][0], 1), round(speed["theirs"][-1], 1)],
          "ratio": round(statistics.median(speed["ours"]) / statistics.median(speed["theirs"]), 2)}


class _Arrivals:
  """Host arrival time of each new token (transformers' streamer interface; our on_token)."""

  def __init__(self):
    self.times = []

  def put(self, value):  # transformers calls it with the prompt first, then each new token
    self.times.append(time.perf_counter())

  def end(self):
    pass

  def __call__(self, index, tokens):
    self.times.append(time.perf_counter())


def flat_row(models, start: int = 64, end: int = 960) -> dict:
  """Median milliseconds per step at positions [start, start+64) and [end-64, end), each side."""
  cfg, params, model = models
  new_tokens = end - start
  batch = prompts(1, start)
  out = {"shape": "runlocal", "batch": 1, "prompt": start, "last_position": end}
  for side, fn in (("ours", ours_fn(cfg, params, new_tokens)),
                   ("theirs", theirs_fn(model, new_tokens))):
    fn(batch)  # warm-up (compiles ours)
    arrivals = _Arrivals()
    fn(batch, arrivals)
    times = arrivals.times[-new_tokens:]  # theirs: the first put() is the prompt
    steps = [b - a for a, b in zip(times, times[1:])]  # steps[i]: position start + i + 1
    early = statistics.median(steps[:64]) * 1e3
    late = statistics.median(steps[-64:]) * 1e3
    out.update({f"{side}_ms_at_{start}": round(early, 3), f"{side}_ms_at_{end}": round(late, 3),
                f"{side}_late_over_early": round(late / early, 2)})
  return out


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  for shape in FLAGS.shapes:
    if shape not in SHAPES:
      raise app.UsageError(f"unknown shape {shape!r}; known: {list(SHAPES)}")
    with tempfile.TemporaryDirectory() as directory:
      models = both_models(shape, directory)
      for batch in FLAGS.batches:
        print(json.dumps(speed_row(shape, int(batch), FLAGS.new_tokens, FLAGS.repeats, models)),
              flush=True)
      if FLAGS.flat and shape == "runlocal":
        start, end = (int(p) for p in FLAGS.flat_positions)
        print(json.dumps(flat_row(models, start, end)), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
