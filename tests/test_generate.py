"""Incremental decoding (research.generate): parity with transformers' `generate` and with
uncached recomputation, the sampling knobs, sharding, streaming, and the command line."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import generate as generate_lib
from research.generate import scores as scores_lib
from research.generate.cached_model import uncached_logits
from research.models.config import ModelConfig
from research.models.transformer import Transformer

GPT2 = dict(activation="gelu_tanh", layer_norm_eps=1e-5)
LLAMA = dict(norm="rmsnorm", position_embedding="rotary", gated_mlp=True, use_bias=False,
             num_kv_heads=2, activation="silu", tie_embeddings=False, layer_norm_eps=1e-6)
# prompts of different lengths, batched (left-padded inside)
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [3], [40, 41, 42, 43, 44]]


def tiny_decoder(variant, **kw):
  """A random decoder whose weights are large enough (N(0, 0.3)) that its greedy and beam
  choices vary from step to step, unlike a freshly initialised one's."""
  cfg = ModelConfig(kind="decoder", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                    mlp_dim=64, max_len=64, dtype="float32", heads=("lm",), type_vocab_size=0,
                    pooler=False, **{**variant, **kw})

  def init():  # one compiled program, not one per operation (eager)
    params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape)
                                     for k, l in zip(keys, leaves)])
  return cfg, jax.jit(init)()


def _transformers_model(cfg, params, directory):
  from conftest import require  # pylint: disable=g-import-not-at-top
  transformers = require("transformers", "parity with transformers' generate")
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  hf.save_pretrained(cfg, jax.tree.map(np.asarray, params), str(directory))
  return transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()


def _transformers_generate(model, prompts, pad_id, stop_id, **kw):
  """transformers' generate on the same left-padded batch: each row's new tokens, cut after the
  stop token."""
  import torch  # pylint: disable=g-import-not-at-top
  length = max(len(p) for p in prompts)
  ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_id,
                         eos_token_id=stop_id, **kw)
  return [_until_stop(row[length:].tolist(), stop_id) for row in out]


def _until_stop(tokens, stop_id):
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(stop_id) + 1] if stop_id in tokens else tokens


def _ours(cfg, params, settings, stop_id):
  out = generate_lib.generate_ids(params, cfg, PROMPTS, settings, stop_ids=(stop_id,), pad_id=0)
  return [_until_stop(row[:n], stop_id) for row, n in zip(out["tokens"], out["lengths"])]


# the stop token: one these models emit in some rows and not others, so rows end at different
# steps (asserted below)
@pytest.mark.slow
@pytest.mark.parametrize("variant,stop_id", [(GPT2, 2), (LLAMA, 13)], ids=["gpt2", "llama"])
def test_greedy_and_beam_equal_transformers_generate(tmp_path, variant, stop_id):
  cfg, params = tiny_decoder(variant)
  model = _transformers_model(cfg, params, tmp_path)
  greedy = _ours(cfg, params, generate_lib.Settings(max_new_tokens=12), stop_id)
  assert any(stop_id in row for row in greedy) and len({len(r) for r in greedy}) > 1
  assert greedy == _transformers_generate(model, PROMPTS, 0, stop_id, max_new_tokens=12,
                                          do_sample=False)
  for length_penalty in (1.0, -0.5):
    beam = _ours(cfg, params, generate_lib.Settings(max_new_tokens=12, strategy="beam",
                                                   num_beams=3, length_penalty=length_penalty),
                 stop_id)
    assert beam == _transformers_generate(model, PROMPTS, 0, stop_id, max_new_tokens=12,
                                          num_beams=3, do_sample=False,
                                          length_penalty=length_penalty)
  assert beam != greedy  # the search differs from greedy on this model


@pytest.mark.slow
@pytest.mark.parametrize("variant", [GPT2, LLAMA, dict(GPT2, scan_layers=True)],
                         ids=["gpt2", "llama", "scanned"])
def test_cached_decoding_equals_full_recomputation(variant):
  _assert_cached_equals_uncached(*tiny_decoder(variant), new_tokens=16)


def _assert_cached_equals_uncached(cfg, params, new_tokens):
  """Greedy decoding of PROMPTS: each step's logits equal the uncached model's on the prompt and
  the tokens before it (within 1e-5); returns the decoded tokens."""
  out = generate_lib.generate_ids(params, cfg, PROMPTS,
                                  generate_lib.Settings(max_new_tokens=new_tokens),
                                  keep_logits=True)
  for row, prompt in enumerate(PROMPTS):
    reference = jax.jit(uncached_logits, static_argnums=0)(  # compiled: eager is 2x slower
        cfg, params, jnp.asarray([prompt]), jnp.ones((1, len(prompt)), jnp.int32),
        jnp.asarray(out["tokens"][row:row + 1]))
    np.testing.assert_allclose(out["logits"][row], reference[0], atol=1e-5)
  return out["tokens"]


class MarkovChain:
  """A decoder whose next-token probabilities depend on the last token only (CHAIN's rows):
  what `beam.decode` calls, `prefill` and `step`, with a cache that holds nothing."""
  # tokens: 0 stops, 1 is the prompt, 2 and 3 are words, 4 is padding
  CHAIN = np.log(np.array([[0.2] * 5,
                           [0.4, 0.04, 0.5, 0.04, 0.02],
                           [0.1, 0.08, 0.1, 0.7, 0.02],
                           [0.7, 0.08, 0.1, 0.1, 0.02],
                           [0.2] * 5], np.float32))

  def prefill(self, params, prompt_ids, prompt_mask):
    return jnp.asarray(self.CHAIN)[prompt_ids[:, -1]], jnp.zeros((prompt_ids.shape[0], 1, 1, 1))

  def step(self, params, cache, tokens, rows_mask, index):
    return jnp.asarray(self.CHAIN)[tokens], cache


# Worked by hand: '0' (stop at once) has log p = log .4 over 1 token, '2 3 0' log(.5 .7 .7) over
# 3; every other ending scores lower at these penalties. Without a penalty the short one wins,
# with one the long one does.
SHORT, LONG = (np.log(0.4), 1), (np.log(0.5 * 0.7 * 0.7), 3)


@pytest.mark.parametrize("length_penalty, tokens, best", [
    (0.0, [0, 4, 4, 4], SHORT), (2.0, [2, 3, 0, 4], LONG)])
def test_beam_scores_finished_hypotheses_by_length_penalised_log_probability(
    length_penalty, tokens, best):
  from research.generate import beam  # pylint: disable=g-import-not-at-top
  settings = generate_lib.Settings(strategy="beam", num_beams=2, max_new_tokens=4,
                                   length_penalty=length_penalty)
  decode = jax.jit(lambda ids: beam.decode(MarkovChain(), settings, None, ids, ids,
                                           stop_ids=(0,), pad_id=4))
  out = decode(jnp.ones((1, 1), jnp.int32))  # the prompt: token 1
  assert out["tokens"].tolist() == [tokens]
  log_p, length = best
  np.testing.assert_allclose(out["scores"], [log_p / length ** length_penalty], rtol=1e-5)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
  cfg, params = tiny_decoder(LLAMA)
  run = lambda **kw: generate_lib.generate_ids(
      params, cfg, PROMPTS, generate_lib.Settings(max_new_tokens=8, **kw))["tokens"]
  first, again = run(strategy="sample", seed=3), run(strategy="sample", seed=3)
  np.testing.assert_array_equal(first, again)
  assert (first != run(strategy="sample", seed=4)).any()
  np.testing.assert_array_equal(run(strategy="sample", top_k=1, seed=9), run())


def test_score_processing_equals_transformers_processors():
  from conftest import require  # pylint: disable=g-import-not-at-top
  torch = require("torch", "parity with transformers' logits processors")
  from transformers import generation as hf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(3, 50)).astype(np.float32) * 3
  ids = rng.integers(0, 50, size=(3, 6))
  seen = np.zeros((3, 50), bool)
  np.put_along_axis(seen, ids, True, axis=1)
  theirs = lambda processor: processor(torch.tensor(ids), torch.tensor(scores)).numpy()
  np.testing.assert_allclose(scores_lib.penalize_repeats(scores, seen, 1.3),
                             theirs(hf.RepetitionPenaltyLogitsProcessor(1.3)), rtol=1e-6)
  np.testing.assert_array_equal(scores_lib.top_k_only(scores, 7),
                                theirs(hf.TopKLogitsWarper(7)))
  for p in (0.3, 0.9):
    np.testing.assert_array_equal(scores_lib.top_p_only(scores, p), theirs(hf.TopPLogitsWarper(p)))


def _fake_workdir(directory, kind):
  """A workdir's config.json and tokenizer.json, without weights: enough for the command's
  checks, which all run before the weights load."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
  import importlib  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module("clm" if kind == "decoder" else "mlm").get_config("runlocal")
  config.model.update(vocab_size=300, heads=("lm",) if kind == "decoder" else ("mlm",))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    f.write(config.to_json())
  texts = ["the market rose and the shares fell"] * 4
  tokenizer_lib.save(tokenizer_lib.train(kind, [texts], 300), str(directory))
  return str(directory)


def _generate_cli(*args):
  return subprocess.run([sys.executable, "-m", "research.generate", *args],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(__file__)))


def test_bad_input_is_one_line(tmp_path):
  decoder = _fake_workdir(tmp_path / "decoder", "decoder")
  encoder = _fake_workdir(tmp_path / "encoder", "encoder")
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  long_prompt = "the market " * 600
  tokens = len(tokenizer_lib.from_file(os.path.join(decoder, "tokenizer.json")).encode(
      long_prompt, add_special_tokens=False).ids)
  assert tokens > 1024
  bad_rows = tmp_path / "rows.jsonl"
  bad_rows.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
  cases = {
      (f"--workdir={decoder}", "--prompt=" + long_prompt):
          f"error: a prompt of {tokens} tokens + max_new_tokens 64 exceeds the model's context "
          "of 1024 tokens",
      (f"--workdir={decoder}", "--prompt=x", "--max_new_tokens=0"):
          "error: max_new_tokens must be positive, got 0",
      (f"--workdir={encoder}", "--prompt=x"):
          "error: generation needs a decoder with a causal-LM head; this model is an encoder "
          "with heads ['mlm']",
      (f"--workdir={decoder}", "--prompt=x", "--top_p=0"): "error: top_p must be in (0, 1], got 0.0",
      (f"--workdir={decoder}", "--prompt=x", "--top_p=1.5"):
          "error: top_p must be in (0, 1], got 1.5",
      (f"--workdir={decoder}", "--prompt=x", "--stop=notavocabularyentry"):
          "error: --stop 'notavocabularyentry' is not a token of this model's vocabulary",
      (f"--workdir={decoder}", f"--input={bad_rows}"):
          f"error: {bad_rows}:2: the row has no 'prompt' field",
  }
  for args, line in cases.items():
    proc = _generate_cli(*args)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [line]), proc.stderr


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
  """A runlocal causal-LM run of a few steps (its weights make varied text, not good text)."""
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("clm"))
  proc = run_cli("--config=configs/clm.py:runlocal", f"--workdir={workdir}",
                 "--config.train.steps=3", "--config.train.batch_size=8",
                 "--config.data.seq_len=64", "--config.data.vocab_size=512",
                 "--config.evals.every_steps=3", "--config.evals.batches=1",
                 "--config.logging.progress=False")
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


@pytest.mark.slow
def test_command_line_streams_a_prompt_and_writes_jsonl(decoder_run, tmp_path):
  params, model_cfg, tokenizer = generate_lib.load(decoder_run)
  settings = generate_lib.Settings(max_new_tokens=12, strategy="sample", seed=7)
  pieces = []
  expected = generate_lib.generate(params, model_cfg, tokenizer, ["The market"], settings,
                                   on_text=pieces.append)
  assert "".join(pieces) == expected[0] and len(pieces) > 1  # streamed piece by piece
  args = ["--max_new_tokens=12", "--strategy=sample", "--seed=7"]
  proc = _generate_cli(f"--workdir={decoder_run}", "--prompt=The market", *args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout == "The market" + expected[0] + "\n"

  prompts = ["Shares in", "The government said", "Rain"]
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
  out = tmp_path / "out.jsonl"
  proc = _generate_cli(f"--workdir={decoder_run}", f"--input={path}", f"--output={out}",
                       "--strategy=beam", "--num_beams=3", "--max_new_tokens=10",
                       "--batch_size=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  beam = generate_lib.Settings(max_new_tokens=10, strategy="beam", num_beams=3)
  expected = generate_lib.generate(params, model_cfg, tokenizer, prompts, beam)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert rows == [{"prompt": p, "id": i, "completion": c}
                  for i, (p, c) in enumerate(zip(prompts, expected))]


MESH_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
from test_generate import tiny_decoder, PROMPTS, LLAMA
from research import generate as g, sharding
cfg, params = tiny_decoder(LLAMA)
mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
out = {}
for settings in [g.Settings(max_new_tokens=10), g.Settings(max_new_tokens=10, strategy="beam", num_beams=3),
                 g.Settings(max_new_tokens=10, strategy="sample", seed=5)]:
  out[settings.strategy] = [g.generate_ids(params, cfg, PROMPTS, settings)["tokens"].tolist(),
                            g.generate_ids(params, cfg, PROMPTS, settings, mesh=mesh)["tokens"].tolist()]
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_generation_on_a_mesh_equals_one_device():
  """8 devices as data 2 x fsdp 2 x tensor 2: parameters placed by the training rules, the batch
  and cache split over data and fsdp; every strategy gives the single device's tokens."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT], capture_output=True, text=True,
                        timeout=600, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
  for strategy, (single, meshed) in result.items():
    assert single == meshed, strategy


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ia3", "adapter", "prefix", "prompt"])
def test_peft_models_decode_with_the_cache(method):
  """Adapters, prefixes and soft prompts are part of what the cache must reproduce; LoRA and IA3
  merged into the kernels decode to the same tokens."""
  from research.peft.config import PeftConfig  # pylint: disable=g-import-not-at-top
  cfg, params = tiny_decoder(LLAMA, peft=PeftConfig(method=method, num_virtual_tokens=3))
  tokens = _assert_cached_equals_uncached(cfg, params, new_tokens=8)
  merged_params, merged_cfg = generate_lib.merged_adapters(params, cfg)
  if method in ("lora", "ia3"):
    assert merged_cfg.peft.method == "none"
    merged = generate_lib.generate_ids(merged_params, merged_cfg, PROMPTS,
                                       generate_lib.Settings(max_new_tokens=8))
    np.testing.assert_array_equal(merged["tokens"], tokens)


@pytest.mark.slow
def test_benchmark_command_prints_consistent_rows():
  """The README's benchmark, shrunk: one row per batch with ratio = ours / theirs, and the
  per-token row (late over early = the two medians' quotient)."""
  proc = subprocess.run([sys.executable, "-m", "research.generate.benchmark", "--shapes=runlocal",
                         "--batches=1,2", "--new_tokens=8", "--repeats=1", "--flat",
                         "--flat_positions=16,96"], capture_output=True, text=True, timeout=600,
                        cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  speed, flat = rows[:2], rows[2]
  assert [r["batch"] for r in speed] == [1, 2]
  for r in speed:
    assert r["ratio"] == pytest.approx(r["ours_tokens_per_s"] / r["theirs_tokens_per_s"], rel=0.01)
    assert r["ours_spread"][0] <= r["ours_tokens_per_s"] <= r["ours_spread"][1]
  for side in ("ours", "theirs"):
    assert flat[f"{side}_late_over_early"] == pytest.approx(
        flat[f"{side}_ms_at_96"] / flat[f"{side}_ms_at_16"], rel=0.02)
