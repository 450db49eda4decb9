"""Every experiment config (`experiments/*/configs/*.py`) is built for each argument it accepts,
and each config file runs one training step through the CLI.

Each config file is found by a glob, so a new experiment folder is covered without editing this
module. A config lists the arguments it accepts in `VARIANTS` (e.g. 'task=mrpc'; `("",)` for a
config without arguments). Every variant is resolved as a run would resolve it
(`research.train.resolve`: the config's checks, the task files read, the tokenizer and the shapes
of the model; nothing written) and the first variant of each file trains one step as a user types
it,
  python -m research.main --config=experiments/<folder>/configs/<file>.py[:VARIANT] --workdir=...
with small overrides (`SHRINK`, one step of 8 x 32 tokens), its hub tasks pointed at fixture files
(`--config.tasks.<t>.data_dir`, tests/finetune_fixtures.py) and its `hf:` hub checkpoint at a
tiny random transformers checkpoint of the same architecture (`STAND_INS`; a hub name the table
does not know fails, naming it). The run must end at step 1 with a finite training loss; a LoRA
run must train exactly its adapters and task head.

The default suite trains one file (`DEFAULT_CASE`: RoBERTa with LoRA, the folder whose model
and method no other default test runs from a config file); `pytest -m slow` trains the others
and resolves every variant.
"""
import glob
import importlib.util
import json
import math
import os

import pytest

from conftest import REPO, apply_flag, require, run_cli
from test_cli_errors import _fails_with
from finetune_fixtures import conll_dir, glue_dir, hf_checkpoint, squad_dir
from research import tracking

SHRINK = ["--config.train.steps=1", "--config.train.batch_size=8", "--config.data.seq_len=32",
          "--config.evals.every_steps=1", "--config.ckpt.every_steps=1",
          "--config.logging.every_steps=1", "--config.logging.progress=False",
          "--config.logging.tensorboard=False", "--config.model.dtype=float32"]
# SQuAD's windows need more room than 32 tokens: a window of 64, a 16-token stride and question.
QA_SHRINK = ["--config.data.seq_len=64", "--config.tasks.{t}.doc_stride=16",
             "--config.tasks.{t}.max_question_len=16"]
# Hub checkpoint -> the architecture of the tiny checkpoint that stands in for it.
STAND_INS = {"bert-base-uncased": "bert", "bert-base-cased": "bert", "roberta-base": "roberta",
             "sentence-transformers/all-MiniLM-L6-v2": "bert", "all-MiniLM-L6-v2": "bert"}


def config_files():
  return sorted(glob.glob(os.path.join(REPO, "experiments", "*", "configs", "*.py")))


def load(path):
  name = os.path.relpath(path, REPO).replace(os.sep, "_").replace(".", "_")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


DEFAULT_CASE = "lora_roberta_glue/glue.py"


def variants(path):
  variants = load(path).VARIANTS
  assert variants, f"{path}: VARIANTS names no argument"
  return variants


def first_variants():
  """One case per config file: its first variant (slow but for DEFAULT_CASE)."""
  out = []
  for path in config_files():
    rel = os.path.relpath(path, REPO)
    case = "/".join(rel.split(os.sep)[1::2])  # <folder>/<file>.py
    out.append(pytest.param(rel, variants(path)[0], id=f"{case}:{variants(path)[0] or 'default'}",
                            marks=() if case == DEFAULT_CASE else (pytest.mark.slow,)))
  return out


def every_variant():
  return [pytest.param(os.path.relpath(path, REPO), v, id=f"{os.path.relpath(path, REPO)}:{v}")
          for path in config_files() for v in variants(path)]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
  """{architecture: directory of a tiny random checkpoint}, made once, on first use."""
  require("torch", "the experiments' hf: configs start from a transformers checkpoint")
  require("transformers", "the experiments' hf: configs start from a transformers checkpoint")
  root, made = tmp_path_factory.mktemp("hf"), {}
  texts = [f"{a} visited {b} with {c} ." for a in ("Angela Merkel", "Ada Lovelace", "Marie Curie")
           for b in ("Paris", "Tokyo", "Berlin") for c in ("Google", "the BBC", "UNESCO")]
  def get(architecture):
    if architecture not in made:
      made[architecture] = hf_checkpoint(root / architecture, architecture, texts * 4)
    return made[architecture]
  return get


def hub_overrides(config, tmp_path):
  """--config overrides pointing each hub task at fixture files (QA: with room for windows)."""
  out = []
  for name, task in config.tasks.items():
    source, data = task.source, None
    if source.startswith("glue/"):
      data = glue_dir(tmp_path, source[5:])
    elif source == "conll2003":
      data = conll_dir(tmp_path)
    elif source in ("squad", "squad_v2"):
      data = squad_dir(tmp_path, unanswerable=10 if source == "squad_v2" else 0)
    if task.kind == "qa":
      out += [o.format(t=name) for o in QA_SHRINK]
    if data is not None:
      out.append(f"--config.tasks.{name}.data_dir={data}")
  return out


def lora_trainable(config_json) -> int:
  """What a LoRA run trains: rank x (in + out) per adapted projection, and its task heads."""
  model = config_json["model"]
  hidden, rank, layers = model["hidden_size"], config_json["peft"]["rank"], model["num_layers"]
  adapted = 2  # query and value: the paper's targets, the recipe's
  heads = 0
  for head in model["heads"]:  # 'name=classification:N'
    labels = int(head.rsplit(":", 1)[1])
    dense = hidden * hidden + hidden if model["classifier"] == "first_token_mlp" else 0
    heads += dense + hidden * labels + labels
  return layers * adapted * rank * 2 * hidden + heads


def overrides(config, config_file, tmp_path, stand_ins):
  """The --config flags that make `config` small and offline (fixtures, a stand-in checkpoint)."""
  flags = [*SHRINK, *hub_overrides(config, tmp_path)]
  weights = config.init.weights
  if weights.startswith("hf:") and not os.path.isdir(weights[3:]):
    if weights[3:] not in STAND_INS:
      pytest.fail(f"{config_file} starts from {weights!r}: add a tiny stand-in to STAND_INS")
    flags.append(f"--config.init.weights=hf:{stand_ins(STAND_INS[weights[3:]])}")
  return flags


@pytest.mark.slow
@pytest.mark.parametrize("config_file, variant", every_variant())
def test_every_variant_resolves(config_file, variant, tmp_path, stand_ins):
  """The run each argument describes passes every check a run makes before its first write."""
  from research import features  # pylint: disable=g-import-not-at-top
  from research.train import resolve  # pylint: disable=g-import-not-at-top
  config = load(os.path.join(REPO, config_file)).get_config(variant or None)
  for flag in overrides(config, config_file, tmp_path, stand_ins):
    if not flag.startswith("--config.train.steps="):  # a schedule (AdaLoRA's) may need its steps
      apply_flag(config, flag)
  run = resolve.resolve(config, str(tmp_path / "run"), features.REGISTRY)
  assert [t.name for t in run.task_set.tasks] == list(config.tasks)
  assert run.model_cfg.peft.method == config.peft.method
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config_file, variant", first_variants())
def test_one_training_step(config_file, variant, tmp_path, stand_ins):
  config = load(os.path.join(REPO, config_file)).get_config(variant or None)
  workdir = tmp_path / "run"
  argv = [f"--config={config_file}" + (f":{variant}" if variant else ""), f"--workdir={workdir}",
          *overrides(config, config_file, tmp_path, stand_ins)]
  proc = run_cli(*argv)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()  # the summary: the JSON object main prints last
  summary = json.loads("\n".join(lines[max(i for i, l in enumerate(lines) if l == "{"):]))
  assert summary["step"] == 1
  losses = [r["train/loss"] for r in tracking.read_metrics(str(workdir)) if "train/loss" in r]
  assert len(losses) == 1 and math.isfinite(losses[0]), losses
  with open(workdir / "config.json") as f:
    run_config = json.load(f)
  if run_config["peft"]["method"] == "lora":
    assert summary["params/trainable"] == lora_trainable(run_config)


def test_a_task_the_reproduction_lacks_fails_in_one_line(tmp_path):
  """WNLI is a finetune.py task but not one of bert_glue's: refused before anything is written."""
  proc = run_cli("--config=experiments/bert_glue/configs/glue.py:task=wnli",
                 f"--workdir={tmp_path / 'run'}")
  _fails_with(proc, "task must be one of ['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2', "
              "'stsb'], got 'wnli'")
  assert not (tmp_path / "run").exists()
