"""Every `python -m research.*` command in README.md, run through the real command line.

The commands are read from the README's ```bash blocks (backslash-continued lines joined, comments
dropped), so a README edit is tested as it stands. Each runs as a user types it (a subprocess:
environment assignments, quoting and `> file` as a shell applies them), with:
  - its paths pointed at files this module writes: /tmp/... -> a temporary directory,
    `ckpt/bert-base-uncased` -> a randomly initialised tiny BertForMaskedLM saved with
    transformers (+ a WordPiece vocab.txt), `/data/*.txt` -> a small corpus, train.csv / dev.csv /
    new_texts.jsonl -> small files; hub tasks (mrpc, rte, stsb) -> `--config.tasks.<t>.data_dir`
    fixture directories;
  - shrink overrides appended (2 steps of 8 x 32 tokens, one layer, ...) so each takes seconds.
    A checkpoint every step: every config warms its learning rate up from 0, so the step-1
    checkpoint holds exactly the weights a run started from.
A command is identified by its shape (module, --config value, flag names): a shape the table
below does not know fails, so a new README command needs a check here. The ```python snippets
run too, on the same tiny inputs.
"""
import csv
import json
import os
import random
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, apply_flag, require, wandb_offline_env
from finetune_fixtures import PEOPLE, PLACES, ORGS, glue_dir, write_jsonl

STEPS = 2
SHRINK = [f"--config.train.steps={STEPS}", "--config.train.batch_size=8",
          "--config.data.seq_len=32", "--config.model.num_layers=1",
          f"--config.evals.every_steps={STEPS}", "--config.ckpt.every_steps=1",
          "--config.logging.every_steps=1", "--config.logging.progress=False",
          "--config.logging.tensorboard=False"]
SHRINK_BY_CONFIG = {  # what else each config file needs to be small (fields it has)
    "configs/mlm.py": ["--config.data.vocab_size=512", "--config.evals.batches=1"],
    "configs/finetune.py": ["--config.data.vocab_size=512"],
    "configs/clm.py": ["--config.data.vocab_size=512", "--config.evals.batches=1"],
    "configs/continual.py": ["--config.data.vocab_size=512",
                             "--config.continual.ewc.fisher_examples=8",
                             "--config.continual.replay.size=8"],
}
# research.cost on BERT-base's config: a one-layer model compiles its abstract step in seconds.
COST_SHRINK = ["--config.model.num_layers=1", "--config.train.batch_size=8",
               "--config.data.seq_len=32", "--config.data.vocab_size=512"]
# research.aot and research.cost --topology on a runlocal config: one layer compiles for the TPU
# slice in seconds (XLA's TPU compiler is slow on 2 cores).
AOT_SHRINK = ["--config.model.num_layers=1"]
GLUE_FIXTURES = ("mrpc", "rte", "stsb")  # hub tasks finetune_fixtures.glue_dir can stand in for
HF_WIDTH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)


# ---------------------------------------------------------------------------------------------
# The README's commands.
# ---------------------------------------------------------------------------------------------
def _readme():
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def readme_commands():
  """[(argv, env assignments, stdout file or None)] of each `python -m research.*` command."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", _readme(), re.S):
    for line in re.sub(r"\\\n", " ", block).splitlines():
      tokens = shlex.split(line, comments=True)
      while tokens:  # `a && b`: each part its own command
        part = tokens[:tokens.index("&&")] if "&&" in tokens else tokens
        tokens = tokens[len(part) + 1:]
        env = {}
        while part and re.fullmatch(r"[A-Z_]+=.*", part[0]):
          key, value = part.pop(0).split("=", 1)
          env[key] = value
        if part[:2] != ["python", "-m"] or not part[2].startswith("research."):
          continue  # pip, pytest, huggingface-cli: not ours
        stdout = None
        if ">" in part:
          stdout = part[part.index(">") + 1]
          part = part[:part.index(">")]
        commands.append((part, env, stdout))
  return commands


def shape(argv, env, stdout):
  """What identifies a command: module, --config value, flag names (not their values)."""
  out = [f"{k}=" for k in sorted(env)] + [argv[2]]
  for arg in argv[3:]:
    out.append(arg if arg.startswith("--config=") else arg.split("=", 1)[0])
  return " ".join(out + ([">"] if stdout else []))


# ---------------------------------------------------------------------------------------------
# What the commands read: tiny stand-ins written once for the module.
# ---------------------------------------------------------------------------------------------
FILLER = "the a of to and in was were with for on after before new old first last".split()


def _sentences(rng, n):
  return " ".join(
      f"{rng.choice(PEOPLE)} {rng.choice(['visited', 'left', 'praised'])} {rng.choice(PLACES)} "
      f"{' '.join(rng.choice(FILLER) for _ in range(rng.randint(3, 9)))} {rng.choice(ORGS)}."
      for _ in range(n))


class Workspace:
  """The files the README's commands name, and a cache of the commands' results."""

  def __init__(self, root):
    self.root = root
    rng = random.Random(0)
    # '/data/*.txt': two files of blank-line separated documents.
    self.data = root / "data"
    self.data.mkdir()
    self.documents = [_sentences(rng, rng.randint(2, 5)) for _ in range(120)]
    for i in range(2):
      (self.data / f"part{i}.txt").write_text("\n\n".join(self.documents[i::2]) + "\n")
    # train.csv / dev.csv for task=local; new_texts.jsonl for research.predict.
    self.files = root / "files"
    self.files.mkdir()
    words = {"pos": ["great", "lovely", "superb"], "neg": ["awful", "boring", "dreadful"]}
    def csv(n):
      rows = [(f"a {rng.choice(words[label])} film about {rng.choice(PLACES)}", label)
              for label in ("pos", "neg") * (n // 2)]
      return "text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)
    (self.files / "train.csv").write_text(csv(40))
    (self.files / "dev.csv").write_text(csv(10))
    self.new_texts = [{"text": "Shares fell as the bank cut its profit forecast"},
                      {"text": "The striker scored twice in the cup final"},
                      {"text": "The new phone has a faster chip"}]
    write_jsonl(self.files / "new_texts.jsonl", self.new_texts)
    self.prompts = [{"prompt": "The bank said", "id": 1}, {"prompt": "Shares in", "id": 2}]
    write_jsonl(self.files / "prompts.jsonl", self.prompts)
    # gen_train.jsonl / gen_dev.jsonl: prompt -> completion pairs (generative fine-tuning).
    sums = [{"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}
            for a in range(2, 9) for b in range(2, 9)]
    write_jsonl(self.files / "gen_train.jsonl", sums[::2])
    write_jsonl(self.files / "gen_dev.jsonl", sums[1::2])
    self.glue = root / "glue"
    self.glue.mkdir()
    self.glue_dirs = {task: glue_dir(self.glue, task) for task in GLUE_FIXTURES}
    self.tmp = root / "tmp"
    self.tmp.mkdir()
    self.out = root / "out"
    self.out.mkdir()
    self._hf = None
    self.results = {}

  @property
  def hf(self):
    """`ckpt/bert-base-uncased`: a random tiny BertForMaskedLM + vocab.txt (needs transformers)."""
    if self._hf is None:
      require("torch", "the README's hf: commands need a transformers checkpoint")
      transformers = require("transformers", "the README's hf: commands need a checkpoint")
      from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
      texts = self.documents + [
          json.loads(l)["sentence1"] + " " + json.loads(l)["sentence2"]
          for d in self.glue_dirs.values() for l in (d / "train.jsonl").read_text().splitlines()]
      pieces = tokenizer_lib.train_wordpiece(texts, 400).get_vocab()
      vocab = sorted(pieces, key=pieces.get)
      import torch  # pylint: disable=g-import-not-at-top
      torch.manual_seed(0)
      config = transformers.BertConfig(vocab_size=len(vocab), **HF_WIDTH)
      model = transformers.BertForMaskedLM(config).eval()
      path = self.root / "ckpt" / "bert-base-uncased"
      model.save_pretrained(path)
      (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
      self._hf = path
    return self._hf

  def substitute(self, arg, hub_tasks):
    """The README's paths -> this workspace's."""
    paths = {"/tmp/": f"{self.tmp}/", "/data/": f"{self.data}/",
             "train.csv": str(self.files / "train.csv"), "dev.csv": str(self.files / "dev.csv"),
             "new_texts.jsonl": str(self.files / "new_texts.jsonl"),
             "prompts.jsonl": str(self.files / "prompts.jsonl"),
             "gen_train.jsonl": str(self.files / "gen_train.jsonl"),
             "gen_dev.jsonl": str(self.files / "gen_dev.jsonl"),
             "predictions.jsonl": str(self.out / "predictions.jsonl")}
    if "ckpt/bert-base-uncased" in arg:
      paths["ckpt/bert-base-uncased"] = str(self.hf)
    pattern = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    arg = re.sub(rf"(?<![\w./-])({pattern})", lambda m: paths[m.group(1)], arg)
    match = re.match(r"--config=configs/finetune\.py:(?:.*,)?task=([\w+]+)", arg)
    if match:
      hub_tasks.extend(t for t in match.group(1).split("+")
                       if t not in ("bbc_news", "bbc_headlines", "local"))
    return arg

  def argv(self, command):
    """(argv with paths substituted and shrink overrides appended, env, stdout path)."""
    argv, env, stdout = command
    hub_tasks = []
    out = [sys.executable, "-m", argv[2]] + [self.substitute(a, hub_tasks) for a in argv[3:]]
    if argv[2] == "research.main":
      config_file = next(a for a in argv if a.startswith("--config=")).split("=", 1)[1]
      config_file = config_file.split(":")[0]
      out += SHRINK + SHRINK_BY_CONFIG[config_file]
      for task in hub_tasks:
        if task not in self.glue_dirs:
          pytest.fail(f"README command uses hub task {task!r}: no fixture for it here")
        out.append(f"--config.tasks.{task}.data_dir={self.glue_dirs[task]}")
    if argv[2] == "research.predict":
      out.append("--progress=false")
    if argv[2] == "research.cost" and argv[3].split(":")[0] == "--config=configs/mlm.py":
      out += COST_SHRINK + (["--calibrate_steps=2"] if "--calibrate" in argv else [])
    if argv[2] == "research.aot":
      out += AOT_SHRINK
    if argv[2] == "research.data.prepare":  # rows for the shrunk training run that reads them
      config_file = next(a for a in argv if a.startswith("--config=")).split("=", 1)[1]
      out += [f for f in SHRINK + SHRINK_BY_CONFIG[config_file.split(":")[0]]
              if f.startswith("--config.data.")] + ["--progress=false"]
    env = {k: self.substitute(v, []) for k, v in env.items()}
    return out, env, self.substitute(stdout, []) if stdout else None

  def run(self, name):
    """Runs the README command called `name` in CHECKS (once); returns its result."""
    if name not in self.results:
      command = COMMANDS_BY_NAME.get(name)
      if command is None:
        pytest.fail(f"the README has no command of the shape {NAMES[name]!r} any more")
      argv, env, stdout = self.argv(command)
      argv += EXTRA_FLAGS.get(name, [])
      full_env = dict(os.environ, PYTHONPATH=REPO)  # this checkout's package, not an install
      full_env.update(env)
      if name in OFFLINE_WANDB:  # W&B's own files (cache, settings) under the workspace too
        full_env.update(wandb_offline_env(str(self.root / "wandb")))
      proc = subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True,
                            timeout=600)
      if stdout:
        with open(stdout, "w") as f:
          f.write(proc.stdout)
      self.results[name] = Result(argv, env, stdout, proc)
    return self.results[name]


class Result:
  def __init__(self, argv, env, stdout, proc):
    self.argv, self.env, self.stdout_file, self.proc = argv, env, stdout, proc

  def flag(self, name):
    return next(a.split("=", 1)[1] for a in self.argv if a.startswith(f"--{name}="))

  @property
  def workdir(self):
    return self.flag("workdir")

  def summary(self):
    with open(os.path.join(self.workdir, "summary.json")) as f:
      return json.load(f)

  def metrics(self):
    from research import tracking  # pylint: disable=g-import-not-at-top
    return tracking.read_metrics(self.workdir)

  def assert_ok(self):
    assert self.proc.returncode == 0, (
        f"{shlex.join(self.argv)}\nexit code {self.proc.returncode}\n{self.proc.stderr[-3000:]}")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
  return Workspace(tmp_path_factory.mktemp("readme"))


# ---------------------------------------------------------------------------------------------
# Checks, one per command shape.
# ---------------------------------------------------------------------------------------------
def _params(workdir, step=None):
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  c = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  return c.restore_raw_state(c.latest_step() if step is None else step)["params"]


def _flat(params):
  from research import params as params_lib  # pylint: disable=g-import-not-at-top
  return {path: np.asarray(v) for path, v in params_lib.flatten(params).items()}


def _png_shape(path):
  """(height, width) in pixels of the PNG at `path` (fails if it is not one)."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  return matplotlib.image.imread(path).shape[:2]


def _trained(result):
  """Exit code 0, the steps asked for, a checkpoint of the last one, one metrics line a step."""
  result.assert_ok()
  summary = result.summary()
  assert summary["step"] == STEPS
  assert [r["step"] for r in result.metrics() if "train/loss" in r] == list(range(1, STEPS + 1))
  assert os.path.isdir(os.path.join(result.workdir, "checkpoints", str(STEPS)))
  return summary


def _loaded(result, summary, source, source_params, new=None):
  """The summary's init line counts every array but the run's new ones (regex `new`) as loaded,
  and the step-1 checkpoint (taken at learning rate 0) holds exactly the source's values."""
  match = re.fullmatch(rf"init\.weights {re.escape(source)} \((\d+) of (\d+) arrays\)",
                       summary["init"])
  assert match, summary["init"]
  loaded, total = int(match.group(1)), int(match.group(2))
  started, source_params = _flat(_params(result.workdir, 1)), _flat(source_params)
  kept = [k for k in started if not (new and re.search(new, k))]
  assert total == len(started) and 0 < loaded == len(kept), (summary["init"], sorted(started))
  for key in kept:
    np.testing.assert_array_equal(started[key], source_params[key], err_msg=key)


def check_quickstart(ws, result):
  summary = _trained(result)
  assert summary["init"] == "scratch"
  records = result.metrics()
  # Held-out MLM metrics of the final step, and the loss written per step is finite.
  assert np.isclose(summary["eval/mlm/perplexity"], np.exp(summary["eval/mlm/loss"]))
  assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
  # (metrics.jsonl and summary.json were read above) the plot, the config and the tokenizer load
  assert _png_shape(os.path.join(result.workdir, "loss.png")) == (400, 700)  # 7 x 4 in, 100 dpi
  with open(os.path.join(result.workdir, "config.json")) as f:
    assert json.load(f)["train"]["steps"] == STEPS
  import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(result.workdir, "tokenizer.json"))
  assert tokenizer.decode(tokenizer.encode("the", add_special_tokens=False).ids) == "the"


def check_hf_continue(ws, result):
  """MLM from hf:DIR on /data/*.txt: the HF shape, all its weights, its tokenizer, our corpus."""
  summary = _trained(result)
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  _loaded(result, summary, f"hf:{ws.hf}", hf.load_pretrained(str(ws.hf))[1])  # all of it
  with open(os.path.join(result.workdir, "config.json")) as f:
    model = json.load(f)["model"]
  assert (model["hidden_size"], model["num_layers"]) == (32, 2)  # the checkpoint's, not size=base
  vocab = (ws.hf / "vocab.txt").read_text().split("\n")[:-1]
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  assert tokenizer_lib.load(os.path.join(result.workdir, "tokenizer.json")).get_vocab() == {
      piece: i for i, piece in enumerate(vocab)}
  assert summary["data/train_documents"] + summary["data/eval_documents"] == len(ws.documents)


def check_convert_from_hf(ws, result):
  result.assert_ok()
  out = result.flag("to")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  theirs = load_file(str(ws.hf / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
  ours = _flat(_params(out))["token_embed/embedding"]
  np.testing.assert_array_equal(ours[:theirs.shape[0]], theirs)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["model"]["hidden_size"] == 32
  assert os.path.exists(os.path.join(out, "tokenizer.json"))


def check_convert_to_hf(ws, result):
  result.assert_ok()
  transformers = require("transformers", "the exported checkpoint is loaded with transformers")
  out = result.flag("to_hf")
  ours = _flat(_params(result.flag("from")))
  theirs = transformers.AutoModelForMaskedLM.from_pretrained(out)  # 'AutoModel* loads it'
  embedding = theirs.get_input_embeddings().weight.detach().numpy()
  np.testing.assert_array_equal(embedding, ours["token_embed/embedding"][:embedding.shape[0]])


def check_finetune(ws, result):
  summary = _trained(result)
  assert summary["init"] == "scratch"
  with open(os.path.join(result.workdir, "labels.json")) as f:
    assert json.load(f)["bbc_news"]["names"] == [
        "business", "entertainment", "politics", "sports", "tech"]
  for split in ("eval", "test"):  # the fixed 80/10/10 split of the 2,225 articles, all scored
    with open(os.path.join(result.workdir, "reports", f"{split}_bbc_news_report.json")) as f:
      report = json.load(f)
    assert sum(r["support"] for r in report.values()) == summary[f"data/{split}_rows"]
  assert summary["data/train_rows"] + summary["data/eval_rows"] + summary["data/test_rows"] == 2225


def check_finetune_from_mlm(ws, result):
  """Weights of the quick-start MLM run (its workdir): its backbone loaded, the head new."""
  mlm = ws.run("quickstart")
  summary = _trained(result)
  _loaded(result, summary, mlm.workdir, _params(mlm.workdir), new=r"^heads_")
  with open(os.path.join(result.workdir, "tokenizer.json")) as a, \
      open(os.path.join(mlm.workdir, "tokenizer.json")) as b:
    assert json.load(a) == json.load(b)  # the MLM run's tokenizer came along


def check_local_csv(ws, result):
  summary = _trained(result)
  assert summary["data/train_rows"] == 40 and summary["data/eval_rows"] == 10
  with open(os.path.join(result.workdir, "labels.json")) as f:
    assert json.load(f)["local"]["names"] == ["neg", "pos"]


def check_glue_from_hf(ws, result):
  """Three GLUE heads on one encoder from hf:DIR, temperature-mixed."""
  summary = _trained(result)
  # New: the three heads, and the pooler their classifiers read (BertForMaskedLM saves none).
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  _loaded(result, summary, f"hf:{ws.hf}", hf.load_pretrained(str(ws.hf))[1],
          new=r"^heads_|^backbone/pooler/")
  with open(os.path.join(result.workdir, "config.json")) as f:
    config = json.load(f)
  assert config["model"]["heads"] == ["mrpc=classification:2", "rte=classification:2",
                                      "stsb=classification:1"]
  assert config["mixture"]["kind"] == result.flag("config.mixture.kind")
  for task in GLUE_FIXTURES:  # each task read from its fixture directory, not the hub
    assert (summary[f"{task}/data/train_rows"], summary[f"{task}/data/eval_rows"]) == (48, 16)


def check_predict(ws, result):
  ft = ws.run("finetune")
  result.assert_ok()
  with open(result.stdout_file) as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(ft.workdir, "labels.json")) as f:
    names = json.load(f)["bbc_news"]["names"]
  assert len(rows) == len(ws.new_texts)
  for row in rows:
    assert row["label"] in names and sorted(row["scores"]) == sorted(names)
    assert abs(sum(row["scores"].values()) - 1) < 1e-4
    assert row["label"] == max(row["scores"], key=row["scores"].get)


def check_mesh(ws, result):
  """8 simulated devices, data x fsdp x tensor = 2 x 2 x 2: the 1-device run's losses."""
  summary = _trained(result)
  one = ws.run("quickstart")
  assert summary["init"] == "scratch"
  got = [r["train/loss"] for r in result.metrics() if "train/loss" in r]
  expected = [r["train/loss"] for r in one.metrics() if "train/loss" in r]
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  np.testing.assert_allclose(summary["eval/mlm/loss"], one.summary()["eval/mlm/loss"], rtol=1e-4)


def check_prepare(ws, result):
  result.assert_ok()
  from research.data import prepared  # pylint: disable=g-import-not-at-top
  metadata = prepared.read_metadata(result.flag("output"))
  assert metadata["settings"]["data.seq_len"] == 32  # what the shrunk training runs ask for
  summary = json.loads(result.proc.stdout.strip().splitlines()[-1])
  assert summary["train_rows"] == metadata["splits"]["train"]["rows"] > 0


def check_prepared_train(ws, result):
  """Training on the prepared BBC News rows: the quick-start run's batches, so its losses."""
  summary = _trained(result)
  one = ws.run("quickstart")
  for key in ("data/train_rows", "data/eval_rows", "data/train_tokens", "data/eval_documents"):
    assert summary[key] == one.summary()[key], key
  got = [r["train/loss"] for r in result.metrics() if "train/loss" in r]
  expected = [r["train/loss"] for r in one.metrics() if "train/loss" in r]
  assert got == expected
  assert summary["eval/mlm/loss"] == one.summary()["eval/mlm/loss"]


# Shape -> (name, check). A README command of another shape fails test_every_command_is_mapped.
def check_peft_lora(ws, result):
  """LoRA on the packaged MiniLM: its shape, its weights frozen, adapter-only checkpoints holding
  the LoRA factors and the head (< 1% of the parameters), which change."""
  summary = _trained(result)
  assert summary["params/trainable"] < 0.01 * summary["params/total"]
  with open(os.path.join(result.workdir, "config.json")) as f:
    config = json.load(f)
  assert (config["model"]["hidden_size"], config["model"]["num_layers"]) == (384, 6)
  assert config["peft"]["method"] == "lora"
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  base = _flat(hf.load_pretrained(hf.resolve("sentence-transformers/all-MiniLM-L6-v2"))[1])
  full = _flat(checkpoint.workdir_params(result.workdir))
  for path, value in base.items():  # frozen: the base's weights, unchanged by training
    np.testing.assert_array_equal(full[path], value, err_msg=path)
  trained = {p for p in full if "/lora_" in p or p.startswith("heads_")}
  assert sum(full[p].size for p in trained) == summary["params/trainable"]
  ckpt = checkpoint.Checkpointer(os.path.join(result.workdir, "checkpoints"), use_async=False)
  assert set(ckpt.saved_base(STEPS).frozen) == set(full) - trained  # adapter-only: the rest
  first, last = _flat(_params(result.workdir, 1)), full
  assert any(not np.array_equal(first[p], last[p]) for p in trained if p.endswith("lora_b"))


def check_convert_to_hf_peft(ws, result):
  """The PEFT-format files name the packaged MiniLM's directory as their base and hold the LoRA
  factors."""
  result.assert_ok()
  out = result.flag("to_hf_peft")
  with open(os.path.join(out, "adapter_config.json")) as f:
    adapter = json.load(f)
  assert adapter["peft_type"] == "LORA" and adapter["r"] == 8
  from research.convert import hub  # pylint: disable=g-import-not-at-top
  # the installed package's copy, which loads offline (the hub name would need the hub)
  assert adapter["base_model_name_or_path"] == hub.packaged_dir(
      "sentence-transformers/all-MiniLM-L6-v2")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  names = load_file(os.path.join(out, "adapter_model.safetensors"))
  assert sum(".lora_A." in n for n in names) == 12  # query and value in 6 layers


def check_clm(ws, result):
  summary = _trained(result)
  assert summary["init"] == "scratch" and np.isfinite(summary["eval/clm/loss"])


def check_clm_lora(ws, result):
  """Decoder LoRA from the CLM run: its weights frozen, only LoRA (+ the LM head's) trained."""
  summary = _trained(result)
  base = _flat(_params(ws.run("clm").workdir))
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  full = _flat(checkpoint.workdir_params(result.workdir))
  for path, value in base.items():
    np.testing.assert_array_equal(full[path], value, err_msg=path)
  trained = {p for p in full if "/lora_" in p or p.startswith("heads_")}
  assert summary["params/trainable"] == sum(full[p].size for p in trained) < summary["params/total"]
  assert any(p.endswith("attention/query/lora_a") for p in trained)


def _generated(ws, result, prompts, **settings):
  """What research.generate.generate gives for `prompts` from the README's CLM run."""
  from research import generate  # pylint: disable=g-import-not-at-top
  result.assert_ok()
  params, model_cfg, tokenizer = generate.load(ws.run("clm").workdir)
  return generate.generate(params, model_cfg, tokenizer, prompts, generate.Settings(**settings))


def check_generate_prompt(ws, result):
  """The streamed completion is `generate`'s greedy text, after the prompt."""
  prompt = result.flag("prompt")
  text = _generated(ws, result, [prompt], max_new_tokens=int(result.flag("max_new_tokens")))[0]
  assert result.proc.stdout == prompt + text + "\n"


def check_generate_file(ws, result):
  """One JSONL row per prompt, its fields kept, the completion `generate`'s beam-search text."""
  texts = _generated(ws, result, [p["prompt"] for p in ws.prompts], strategy="beam",
                     num_beams=int(result.flag("num_beams")),
                     max_new_tokens=int(result.flag("max_new_tokens")))
  with open(result.flag("output")) as f:
    rows = [json.loads(line) for line in f]
  assert rows == [{**p, "completion": t} for p, t in zip(ws.prompts, texts)]


def check_generate_sample(ws, result):
  """Sampling with a seed: the command's text is `generate`'s in another process."""
  keys = ("temperature", "top_p", "repetition_penalty")
  settings = {k: float(result.flag(k)) for k in keys}
  settings.update(top_k=int(result.flag("top_k")), seed=int(result.flag("seed")),
                  strategy="sample")
  prompt = result.flag("prompt")
  assert result.proc.stdout == prompt + _generated(ws, result, [prompt], **settings)[0] + "\n"


def check_headlines(ws, result):
  """The run from the CLM weights: its report's generations are `generate`'s greedy text of the
  best parameters on the report's inputs, and the summary's ROUGE-L is theirs."""
  summary = _trained(result)
  from research import checkpoint, generate  # pylint: disable=g-import-not-at-top
  from research.evaluate import generation  # pylint: disable=g-import-not-at-top
  with open(os.path.join(result.workdir, "reports", "test_bbc_headlines_generations.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  params, model_cfg, tokenizer = generate.load(result.workdir)
  config = checkpoint.workdir_config(result.workdir)
  budget = config["tasks"]["bbc_headlines"]["max_new_tokens"]
  texts = generate.generate(params, model_cfg, tokenizer, [r["input"] for r in rows],
                            generate.Settings(max_new_tokens=budget))
  assert [r["generated"] for r in rows] == texts
  rouge = generation.generation_metrics(texts, [r["reference"] for r in rows])["rouge_l"]
  assert summary["test/bbc_headlines/rouge_l"] == pytest.approx(rouge)


def check_generation_local(ws, result):
  """Your JSONL pairs: the eval metrics are those of the final report's generations."""
  summary = _trained(result)
  from research.evaluate import generation  # pylint: disable=g-import-not-at-top
  with open(os.path.join(result.workdir, "reports", "eval_local_generations.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["prompt"] for r in rows] == [json.loads(l)["prompt"] for l in
                                         open(ws.files / "gen_dev.jsonl")][:len(rows)]
  metrics = generation.generation_metrics([r["generated"] for r in rows],
                                          [r["reference"] for r in rows])
  for name, value in metrics.items():
    assert summary[f"eval/local/{name}"] == pytest.approx(value), name


def _compressed(ws, result):
  """The fine-tuning command's workdir (the teacher) and the compressed one, which predict reads."""
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  result.assert_ok()
  import jax  # pylint: disable=g-import-not-at-top
  teacher, out = ws.run("finetune").workdir, result.flag("out")
  predictor = Predictor(out)
  rows = predictor.predict(ws.new_texts)
  assert len(rows) == len(ws.new_texts) and all(r["label"] in r["scores"] for r in rows)
  # on the device once (a step-0 checkpoint restores as host arrays, copied at every call else)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(predictor.params))
  return teacher, out


def check_compress_quantize(ws, result):
  """int8 kernels within half a step of the teacher's weights, per output channel."""
  teacher, out = _compressed(ws, result)
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  assert checkpoint.workdir_config(out)["model"]["quantization"] == "int8"
  ours, theirs = _flat(checkpoint.workdir_params(out)), _flat(checkpoint.workdir_params(teacher))
  kernels = [p for p, v in ours.items() if v.dtype == np.int8]
  assert any("attention/query" in p for p in kernels) and any("mlp/down" in p for p in kernels)
  for path in kernels:
    scale = ours[path + "_scale"]
    assert np.all(np.abs(ours[path] * scale - theirs[path]) <= scale / 2 + 1e-7), path
    assert path[:-len("kernel")] + "input_scale" in ours, path  # calibrated activations
  # Training from it (its int8 kernels without their scales) is refused in one line, untouched.
  from test_cli_errors import _fails_with  # pylint: disable=g-import-not-at-top
  for flag in (f"--config.init.weights={out}", f"--config.distill.teacher={out}"):
    proc = subprocess.run([sys.executable, "-m", "research.main",
                           "--config=configs/finetune.py:task=bbc_news,runlocal",
                           f"--workdir={ws.tmp}/from_int8", flag], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    _fails_with(proc, f"{flag.split('=')[0][len('--config.'):]}: {out!r} holds an int8 model")
    assert not os.path.exists(f"{ws.tmp}/from_int8")


def check_compress_heads(ws, result):
  """Half the heads and neurons gone: smaller matrices, the kept ones the teacher's columns."""
  teacher, out = _compressed(ws, result)
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  before, after = (checkpoint.workdir_config(w)["model"] for w in (teacher, out))
  assert after["num_heads"] == before["num_heads"] // 2
  assert after["mlp_dim"] == before["mlp_dim"] // 2
  ours = _flat(checkpoint.workdir_params(out))
  theirs = _flat(checkpoint.workdir_params(teacher))
  up = "backbone/layer_0/mlp/up/kernel"
  assert ours[up].shape == (before["hidden_size"], before["mlp_dim"] // 2)
  kept = [j for j in range(theirs[up].shape[1])
          if any(np.array_equal(theirs[up][:, j], ours[up][:, i]) for i in range(ours[up].shape[1]))]
  assert len(kept) == ours[up].shape[1]


def check_compress_sparse(ws, result):
  """Exactly half the projection kernels' weights (one global threshold) are 0."""
  _, out = _compressed(ws, result)
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  flat = _flat(checkpoint.workdir_params(out))
  kernels = [v for p, v in flat.items() if p.startswith("backbone/") and p.endswith("/kernel")
             and re.search(r"/(attention|mlp)/", p)]
  total, zeros = sum(v.size for v in kernels), sum(int((v == 0).sum()) for v in kernels)
  assert abs(zeros - total // 2) <= 1, (zeros, total)


def check_compress_distill(ws, result):
  """A 1-block every_k student trained on the teacher's recipe, the teacher in its step."""
  teacher, out = _compressed(ws, result)
  from research import checkpoint, tracking  # pylint: disable=g-import-not-at-top
  config = checkpoint.workdir_config(out)
  assert config["distill"]["teacher"] == teacher and config["model"]["num_layers"] == 1
  records = [r for r in tracking.read_metrics(out) if "train/loss" in r]
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  assert all(r["train/bbc_news_soft/loss"] >= 0 for r in records)
  assert f"into a 1-block student in {out}" in result.proc.stdout


def check_prune_finetune(ws, result):
  """Pruned while it fine-tunes: the run's real sparsity is the target (end_step shrunk to the
  run's second update, `EXTRA_FLAGS`), and the kernels hold that share of exact zeros."""
  summary = _trained(result)
  assert summary["prune/sparsity"] == pytest.approx(0.8, abs=1e-4)
  flat = _flat(_params(result.workdir))
  kernels = [v for p, v in flat.items() if p.startswith("backbone/") and p.endswith("/kernel")
             and re.search(r"/(attention|mlp)/", p)]
  zeros = sum(int((v == 0).sum()) for v in kernels) / sum(v.size for v in kernels)
  assert zeros == pytest.approx(summary["prune/sparsity"], abs=1e-6)


def check_distill_main(ws, result):
  summary = _trained(result)
  assert summary["init"].startswith("distill.init=every_k from ")
  assert all(r["train/bbc_news_soft/loss"] >= 0 for r in result.metrics() if "train/loss" in r)


def _continual(result, num_stages=3):
  """Every stage trained and marked done; R's row i = stage i's own test evaluation of every
  task; metrics.jsonl holds one record per stage."""
  result.assert_ok()
  summary = result.summary()
  stages_dir = os.path.join(result.workdir, "stages")
  stages = sorted(os.listdir(stages_dir))
  assert len(stages) == num_stages
  names = [s.split("_", 1)[1] for s in stages]
  for i, stage in enumerate(stages):
    with open(os.path.join(stages_dir, stage, "summary.json")) as f:
      own = json.load(f)
    assert own["step"] == STEPS
    if summary["continual/method"] != "lora":
      for j, name in enumerate(names):
        assert summary[f"continual/R/{i + 1}/{j + 1}"] == own[f"test/{name}/accuracy"]
  from research import tracking  # pylint: disable=g-import-not-at-top
  assert [r["continual/stage"] for r in tracking.read_metrics(result.workdir)] == [1, 2, 3]
  # the heatmap is (1.6 T + 3) x (1.2 T + 2) inches for T tasks, the curves 7 x 4, at 100 dpi
  assert _png_shape(os.path.join(result.workdir, "continual_R.png")) == (
      round(100 * (1.2 * num_stages + 2)), round(100 * (1.6 * num_stages + 3)))
  assert _png_shape(os.path.join(result.workdir, "continual_accuracy.png")) == (400, 700)
  return summary, [os.path.join(stages_dir, s) for s in stages]


def check_continual_local(ws, result):
  summary, _ = _continual(result)
  assert summary["continual/method"] == "naive" and summary["continual/scenario"] == "class"


def check_continual_replay(ws, result):
  """MiniLM, class-incremental with replay: the classes of later stages are masked (a model after
  stage 1 predicts none of them), stages 2 and 3 train on buffers of earlier stages' rows."""
  summary, stages = _continual(result)
  assert summary["continual/R/1/2"] == summary["continual/R/1/3"] == 0.0
  assert summary["continual/R/2/3"] == 0.0
  with open(os.path.join(stages[0], "config.json")) as f:
    assert json.load(f)["model"]["hidden_size"] == 384
  for k in (1, 2):
    with open(os.path.join(stages[k], "replay.json")) as f:
      buffer = json.load(f)
    assert len(buffer["items"]) == 8 and {s for s, _ in buffer["items"]} <= set(range(k))
  first = tracking_records(stages[1])[0]
  assert "train/bbc_news_politics_sports/loss" in first


def tracking_records(workdir):
  from research import tracking  # pylint: disable=g-import-not-at-top
  return [r for r in tracking.read_metrics(workdir) if "train/loss" in r]


def check_continual_ewc(ws, result):
  """MiniLM, task-incremental with EWC: each stage starts from the one before; stages 2 and 3
  add the penalty (positive once the weights move), fed by the Fisher files of stages 1 and 2."""
  _, stages = _continual(result)
  for k in (1, 2):
    with open(os.path.join(stages[k], "config.json")) as f:
      assert json.load(f)["init"]["weights"] == stages[k - 1]
    assert os.path.exists(os.path.join(stages[k - 1], "fisher.npz"))
    penalties = [r["train/ewc"] for r in tracking_records(stages[k])]
    assert penalties[0] == 0.0 and penalties[-1] > 0.0
  assert "train/ewc" not in tracking_records(stages[0])[0]


def check_finetune_lr(ws, result):
  _trained(result)
  with open(os.path.join(result.workdir, "config.json")) as f:
    assert json.load(f)["optim"]["learning_rate"] == 3e-4


def check_report(ws, result):
  """The two runs side by side: each run's final metrics as its summary.json holds them, the one
  config key they differ in, and the overlaid curves."""
  result.assert_ok()
  runs = [ws.run(name) for name in ("finetune", "finetune_lr")]
  out = result.flag("out")
  with open(os.path.join(out, "final_metrics.csv")) as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert set(rows) == {os.path.basename(r.workdir) for r in runs}
  for run in runs:
    row, summary = rows[os.path.basename(run.workdir)], run.summary()
    for key in ("eval/bbc_news/accuracy", "test/bbc_news/accuracy"):
      assert float(row[key]) == summary[key], (key, row[key], summary[key])
  differences = result.proc.stdout.split("## Config differences")[1]
  keys = re.findall(r"^\| ([\w.]+) +\|", differences, re.M)
  assert keys == ["optim.learning_rate"], differences
  assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000


def check_ema(ws, result):
  """The run logged its average's metrics beside its own and wrote the average as a workdir."""
  summary = _trained(result)
  assert summary["ema/step"] == STEPS
  assert {"ema/eval/bbc_news/accuracy", "ema/test/bbc_news/accuracy"} <= set(summary)
  average = _flat(_params(os.path.join(result.workdir, "ema")))
  weights = _flat(_params(result.workdir))
  assert average.keys() == weights.keys()
  assert any(not np.array_equal(average[p], weights[p]) for p in average)


def check_wandb_offline(ws, result):
  """The run trained and logged every step to an offline W&B run in the workdir."""
  _trained(result)
  with open(os.path.join(result.workdir, "wandb_run.json")) as f:
    assert json.load(f)["step"] == STEPS
  runs = os.listdir(os.path.join(result.workdir, "wandb"))
  assert [r for r in runs if r.startswith("offline-run-")], runs


def _cost_table(stdout):
  """{chip: (devices, hours, usd)} of research.cost's printed table."""
  return {m[0]: (int(m[1]), float(m[2]), float(m[3])) for m in re.findall(
      r"^\| ([\w ]+?) \| (\d+) \| [\d.]+ \| [\d.]+ \| ([\d.e+-]+) \| ([\d.]+) \| [\d.]+ \|$",
      stdout, re.M)}


def check_cost_bert(ws, result):
  """Every chip priced: USD = hours x devices x the chip's on-demand price (to the cent)."""
  result.assert_ok()
  from research import chips  # pylint: disable=g-import-not-at-top
  table = _cost_table(result.proc.stdout)
  assert set(table) == {c.name for c in chips.CHIPS}, table
  for chip in chips.CHIPS:
    devices, hours, usd = table[chip.name]
    assert devices == 1
    assert abs(usd - hours * devices * chip.usd_per_hour) <= 0.005 + 1e-3 * usd, chip.name
  assert "memory per device" in result.proc.stdout and "GiB" in result.proc.stdout


def check_cost_json(ws, result):
  """64 devices at MFU 0.4: hours = total FLOPs / (64 x peak x 0.4) for every chip."""
  result.assert_ok()
  out = json.loads(result.proc.stdout.strip().splitlines()[-1])
  assert out["total_flops"] == out["flops_per_token"] * out["tokens"]
  for chip, estimate in out["estimates"].items():
    assert estimate["devices"] == 64 and estimate["mfu"] == 0.4, chip
    expected = out["total_flops"] / (64 * estimate["peak_flops"] * 0.4) / 3600
    assert abs(estimate["hours"] - expected) <= 1e-9 * expected, chip


def check_cost_minilm(ws, result):
  """The packaged MiniLM checkpoint gives the shape: 6 layers of 384."""
  result.assert_ok()
  assert re.search(r"^model: encoder, 6 layers x 384,", result.proc.stdout, re.M), \
      result.proc.stdout[:500]


def check_cost_calibrate(ws, result):
  """This machine's achieved rate, and the training steps' time it predicts from it."""
  result.assert_ok()
  match = re.search(r"this machine \(1 x cpu\): ([\d.]+) GFLOP/s achieved .*predicted training "
                    r"steps: ([\d.]+) s for (\d+) steps", result.proc.stdout)
  assert match, result.proc.stdout[-500:]
  assert int(match.group(3)) == 600  # the runlocal config's steps


def check_aot(ws, result):
  """The runlocal step compiled for a v5e 2x2 slice: it fits, with every figure printed."""
  result.assert_ok()
  out = result.proc.stdout
  assert out.startswith("v5e:2x2: 4 x TPU v5 lite (TPU v5e: 16.00 GiB HBM, 819 GB/s, 197 "
                        "TFLOP/s bf16)\n"), out[:500]
  assert re.search(r"^  XLA: argument .* of 16.00 GiB: fits \(", out, re.M), out
  assert re.search(r"^  roofline step [\d.]+ ms .*tokens/s, MFU 0\.\d+$", out, re.M), out


def check_cost_topology(ws, result):
  """research.cost with the step compiled for a v5e-8: its memory, and the v5e row's compiled
  hours beside the MFU-based ones (the other chips' rows as without --topology)."""
  result.assert_ok()
  out = result.proc.stdout
  assert re.search(r"^memory per device \(8 TPU v5e chips, v5e:2x4, the train step compiled for "
                   r"them, not run\): .* of 16.00 GiB HBM: fits$", out, re.M), out
  table = _cost_table(out)
  assert table["TPU v5e"][0] == 8 and table["TPU v4"][0] == 8, table
  match = re.search(r"^TPU v5e, from the train step compiled for v5e:2x4: roofline step "
                    r"([\d.]+) ms .*: ([\d.e+-]+) hours, ([\d,.]+) USD", out, re.M)
  assert match, out[-1500:]
  steps = 600  # the runlocal config's
  assert float(match.group(2)) == pytest.approx(float(match.group(1)) / 1e3 * steps / 3600,
                                                rel=1e-3)


CHECKS = {
    "research.main --config=configs/mlm.py:runlocal --workdir": ("quickstart", check_quickstart),
    "research.main --config=configs/mlm.py --workdir --config.init.weights --config.data.source":
        ("hf_continue", check_hf_continue),
    "research.convert --from_hf --to": ("convert_from_hf", check_convert_from_hf),
    "research.convert --from --to_hf": ("convert_to_hf", check_convert_to_hf),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir":
        ("finetune", check_finetune),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir "
    "--config.init.weights": ("finetune_from_mlm", check_finetune_from_mlm),
    "research.main --config=configs/finetune.py:task=local,train=train.csv,eval=dev.csv,runlocal "
    "--workdir": ("local_csv", check_local_csv),
    "research.main --config=configs/finetune.py:task=mrpc+rte+stsb --workdir "
    "--config.init.weights --config.mixture.kind": ("glue_from_hf", check_glue_from_hf),
    "research.predict --workdir --input >": ("predict", check_predict),
    "research.data.prepare --config=configs/mlm.py:runlocal --output": ("prepare", check_prepare),
    "research.main --config=configs/mlm.py:runlocal --workdir --config.data.source":
        ("prepared_train", check_prepared_train),
    "XLA_FLAGS= research.main --config=configs/mlm.py:runlocal --workdir --config.mesh.data "
    "--config.mesh.fsdp --config.mesh.tensor": ("mesh", check_mesh),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal,peft=lora --workdir "
    "--config.init.weights": ("peft_lora", check_peft_lora),
    "research.convert --from --to_hf_peft": ("convert_to_hf_peft", check_convert_to_hf_peft),
    "research.main --config=configs/clm.py:runlocal --workdir": ("clm", check_clm),
    "research.main --config=configs/clm.py:runlocal,peft=lora --workdir --config.init.weights":
        ("clm_lora", check_clm_lora),
    "research.main --config=configs/finetune.py:task=bbc_headlines,runlocal --workdir "
    "--config.init.weights": ("headlines", check_headlines),
    "research.main --config=configs/finetune.py:task=local,kind=generation,train=gen_train.jsonl,"
    "eval=gen_dev.jsonl,runlocal --workdir --config.init.weights": ("generation_local",
                                                                    check_generation_local),
    "research.generate --workdir --prompt --max_new_tokens": ("generate_prompt",
                                                              check_generate_prompt),
    "research.generate --workdir --input --output --strategy --num_beams --max_new_tokens":
        ("generate_file", check_generate_file),
    "research.generate --workdir --prompt --strategy --temperature --top_k --top_p "
    "--repetition_penalty --seed": ("generate_sample", check_generate_sample),
    "research.compress --workdir --method --quantize_activations --out": (
        "compress_quantize", check_compress_quantize),
    "research.compress --workdir --method --prune_heads --prune_neurons --out": (
        "compress_heads", check_compress_heads),
    "research.compress --workdir --method --prune_sparsity --out": ("compress_sparse",
                                                                    check_compress_sparse),
    "research.compress --workdir --method --distill_layers --out": ("compress_distill",
                                                                    check_compress_distill),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir "
    "--config.prune.sparsity --config.prune.end_step": ("prune_finetune", check_prune_finetune),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir "
    "--config.model.num_layers --config.distill.teacher --config.distill.init": (
        "distill_main", check_distill_main),
    "research.main --config=configs/continual.py:runlocal --workdir": ("continual_local",
                                                                     check_continual_local),
    "research.main --config=configs/continual.py:sequence=class,method=replay --workdir "
    "--config.init.weights": ("continual_replay", check_continual_replay),
    "research.main --config=configs/continual.py:sequence=task,method=ewc --workdir "
    "--config.init.weights": ("continual_ewc", check_continual_ewc),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir "
    "--config.optim.learning_rate": ("finetune_lr", check_finetune_lr),
    "research.report /tmp/ft /tmp/ft_lr3e-4 --out --metrics": ("report", check_report),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir "
    "--config.ema.decay": ("ema", check_ema),
    "research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir "
    "--config.logging.wandb.mode --config.logging.wandb.project": ("wandb_offline",
                                                                   check_wandb_offline),
    "research.cost --config=configs/mlm.py": ("cost_bert", check_cost_bert),
    "research.cost --config=configs/mlm.py --devices --mfu --nomemory --json": (
        "cost_json", check_cost_json),
    "research.cost --config=configs/finetune.py:task=mrpc --config.init.weights": (
        "cost_minilm", check_cost_minilm),
    "research.cost --config=configs/mlm.py:runlocal --calibrate --nomemory": (
        "cost_calibrate", check_cost_calibrate),
    "research.aot --config=configs/mlm.py:runlocal --topology": ("aot", check_aot),
    "research.cost --config=configs/mlm.py:runlocal --topology": ("cost_topology",
                                                                 check_cost_topology),
}
OFFLINE_WANDB = {"wandb_offline"}  # checks run with W&B offline, its files in the workspace
# Flags appended to one command after the shrink overrides (its schedule, fitted to 2 steps).
EXTRA_FLAGS = {"prune_finetune": ["--config.prune.end_step=1", "--config.prune.interval=1"],
               # no warmup: step 1 moves the weights (at learning rate 0 it would not), so
               # step 2's EWC penalty is measured away from its anchor
               "continual_ewc": ["--config.schedule.warmup_steps=0"]}
# Shapes deliberately not run here, and why.
NOT_RUN = {
    "research.bench --peer --pipeline": "GPU workloads (bert-base, gpt2-medium); the smoke mode "
                                        "is tests/test_bench.py",
    "research.bench --workloads --sweep --max-batch --profile": "GPU workloads",
    "research.bench --smoke --peer --pipeline": "tests/test_bench.py runs the smoke mode",
    "research.bench --device --peer --table": "minutes of interleaved timing; "
                                              "tests/test_bench_cpu.py runs this command on "
                                              "the runlocal workloads",
    "research.bench --device --levers --workloads": "minutes; tests/test_bench_cpu.py runs "
                                                    "--levers on the runlocal decoder",
    "research.memory --kinds": "base-size compiles take minutes; tests/test_memory.py runs the "
                               "command at tiny sizes",
    "research.memory --kinds --batch": "the same, for the decoder",
    "research.bench --smoke --workloads --depths --steps": "minutes (48 unrolled blocks compile); "
                                                           "tests/test_bench.py runs --depths",
    "research.generate.benchmark --flat --repeats": "minutes of timing; tests/test_generate.py "
                                                    "runs it shrunk",
}
# Commands that read what an earlier one wrote (/tmp/mlm, /tmp/bert_cont, /tmp/ft), or compare.
NEEDS = {"finetune_from_mlm": ("quickstart",), "convert_to_hf": ("hf_continue",),
         "predict": ("finetune",), "mesh": ("quickstart",),
         "prepared_train": ("prepare", "quickstart"), "convert_to_hf_peft": ("peft_lora",),
         "clm_lora": ("clm",), "generate_prompt": ("clm",), "generate_file": ("clm",),
         "generate_sample": ("clm",), "headlines": ("clm",), "generation_local": ("clm",),
         "compress_quantize": ("finetune",), "compress_heads": ("finetune",),
         "compress_sparse": ("finetune",), "compress_distill": ("finetune",),
         "distill_main": ("finetune",), "report": ("finetune", "finetune_lr")}
NAMES = {name: s for s, (name, _) in CHECKS.items()}
COMMANDS = readme_commands()
COMMANDS_BY_NAME = {CHECKS[shape(*c)][0]: c for c in COMMANDS if shape(*c) in CHECKS}


def test_every_command_is_mapped():
  shapes = [shape(*c) for c in COMMANDS]
  assert len(shapes) >= len(CHECKS)  # the README still has its commands
  unmapped = [s for s in shapes if s not in CHECKS and s not in NOT_RUN]
  assert not unmapped, f"README commands with no check in {__file__}: {unmapped}"
  assert len(set(shapes)) == len(shapes), "two README commands of one shape"
  for required in ("--config.init.weights=/tmp/", "--config.init.weights=hf:"):
    assert any(any(a.startswith(required) for a in c[0]) for c in COMMANDS), required


SLOW = {"clm", "clm_lora", "peft_lora", "convert_to_hf_peft", "generate_prompt", "generate_file",
        "generate_sample", "headlines", "generation_local", "compress_quantize",
        "compress_heads", "compress_sparse", "compress_distill", "prune_finetune",
        "distill_main", "continual_local", "continual_replay", "continual_ewc",
        "glue_from_hf", "finetune_lr", "report", "wandb_offline", "cost_bert", "cost_calibrate",
        "mesh", "aot", "cost_topology"}  # `-m slow`


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW
                                               else []) for name, _ in CHECKS.values()])
def test_readme_command(ws, name):
  for needed in NEEDS.get(name, ()):
    ws.run(needed).assert_ok()
  check = next(check for n, check in CHECKS.values() if n == name)
  check(ws, ws.run(name))


# ---------------------------------------------------------------------------------------------
# The README's Python snippets.
# ---------------------------------------------------------------------------------------------
def python_snippets():
  return re.findall(r"```python\n(.*?)```", _readme(), re.S)


def _snippet(marker):
  found = [s for s in python_snippets() if marker in s]
  assert len(found) == 1, f"README: {len(found)} python snippets with {marker!r}"
  return found[0]


def test_every_python_snippet_is_run():
  markers = ("train.run(", "hf.load_pretrained(", "lora.merge(", "peft.PeftModel",
             "generate.load(")
  assert all(any(m in s for m in markers) for s in python_snippets()), python_snippets()


def test_snippet_run_is_what_main_runs(ws, monkeypatch):
  """`train.run(mlm.get_config("runlocal"), "/tmp/mlm")`, shrunk like the command line run, on
  the quick-start command's workdir: the same run, finished, so it just reports."""
  quickstart = ws.run("quickstart")
  quickstart.assert_ok()
  from research import train  # pylint: disable=g-import-not-at-top
  real_run, summaries = train.run, []
  def shrunk_run(config, workdir):
    for flag in SHRINK + SHRINK_BY_CONFIG["configs/mlm.py"]:
      apply_flag(config, flag)
    summaries.append(real_run(config, workdir))
    return summaries[-1]
  monkeypatch.setattr(train, "run", shrunk_run)
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(sys, "path", list(sys.path))
  code = ws.substitute(_snippet("train.run("), [])
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  assert len(summaries) == 1
  assert summaries[0]["init"] == f"resumed from step {STEPS}" and summaries[0]["step"] == STEPS
  assert summaries[0]["eval/mlm/loss"] == quickstart.summary()["eval/mlm/loss"]


def test_snippet_load_apply_save(ws):
  """hf.load_pretrained -> models.build(...).apply -> hf.save_pretrained, on the tiny checkpoint."""
  code = ws.substitute(_snippet("hf.load_pretrained("), [])
  namespace = {"input_ids": np.array([[2, 15, 27, 40, 3]])}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["outputs"]["hidden"].shape == (1, 5, 32)
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  _, again = hf.load_pretrained(str(ws.tmp / "exported"), dtype="float32")
  mine, theirs = _flat(namespace["params"]), _flat(again)
  assert mine.keys() == theirs.keys()
  for key in mine:
    np.testing.assert_array_equal(mine[key], theirs[key])


def test_snippet_lora_merge():
  """lora.merge -> a plain model with the same outputs; lora.unmerge -> the LoRA parameters."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from research import models  # pylint: disable=g-import-not-at-top
  from research.peft.config import PeftConfig  # pylint: disable=g-import-not-at-top
  model_cfg = models.ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                                 mlp_dim=64, max_len=16, dtype="float32",
                                 peft=PeftConfig(method="lora", rank=4))
  ids = np.arange(16).reshape(2, 8)
  params = _flat(models.build(model_cfg).init(jax.random.key(0), ids)["params"])
  rng = np.random.default_rng(0)
  params = {p: rng.normal(0, 0.3, v.shape).astype(np.float32) if p.endswith("lora_b") else v
            for p, v in params.items()}
  from research import params as params_lib  # pylint: disable=g-import-not-at-top
  lora_params = params_lib.unflatten(params)
  namespace = {"params": lora_params, "model_cfg": model_cfg}
  exec(compile(_snippet("lora.merge("), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  plain = dataclasses.replace(model_cfg, peft=PeftConfig())
  np.testing.assert_allclose(
      models.build(plain).apply({"params": namespace["merged"]}, ids)["hidden"],
      models.build(model_cfg).apply({"params": lora_params}, ids)["hidden"], atol=1e-5)
  restored = _flat(namespace["params"])
  assert restored.keys() == params.keys()
  for path, value in params.items():
    np.testing.assert_allclose(restored[path], value, atol=1e-6, err_msg=path)


@pytest.mark.slow  # runs the README's LoRA command (MiniLM) first
def test_snippet_peft_loads_the_export(ws):
  """The README's peft snippet loads the exported LoRA run: transformers' logits are ours."""
  require("peft", "the README's snippet loads the export with peft")
  torch = require("torch", "the README's snippet loads the export with peft")
  ws.run("peft_lora").assert_ok()
  ws.run("convert_to_hf_peft").assert_ok()
  namespace = {}
  exec(compile(ws.substitute(_snippet("peft.PeftModel"), []), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  from research import checkpoint, models  # pylint: disable=g-import-not-at-top
  workdir = ws.run("peft_lora").workdir
  with open(os.path.join(workdir, "config.json")) as f:
    model_cfg = models.ModelConfig.of_run(json.load(f))
  ids = np.random.RandomState(0).randint(5, 30000, (2, 16))
  ours = models.build(model_cfg).apply({"params": checkpoint.workdir_params(workdir, best=True)},
                                       ids)["classification_logits"]
  with torch.no_grad():
    theirs = namespace["model"].eval()(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-5)


@pytest.mark.slow  # runs the README's CLM command first
def test_snippet_generate(ws):
  """generate.load + generate on the README's CLM run: the beam texts the command line writes."""
  ws.run("clm").assert_ok()
  namespace = {}
  exec(compile(ws.substitute(_snippet("generate.load("), []), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  from research import generate  # pylint: disable=g-import-not-at-top
  params, model_cfg, tokenizer = generate.load(ws.run("clm").workdir)
  one_by_one = [generate.generate(params, model_cfg, tokenizer, [p], namespace["generate"].Settings(
      max_new_tokens=20, strategy="beam", num_beams=4))[0] for p in ["The market", "Rain fell on"]]
  assert namespace["texts"] == one_by_one  # batching (left padding) changes no text
