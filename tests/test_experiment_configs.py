"""Every experiment config (`experiments/*/configs/*.py`) runs one training step through the CLI.

Each config file is found by a glob, so a new experiment folder is covered without editing this
module. A config lists the arguments it accepts in `VARIANTS` (e.g. 'task=mrpc'); one without
it is run with its default. Each runs as a user types it,
  python -m research.main --config=experiments/<folder>/configs/<file>.py[:VARIANT] --workdir=...
with small overrides (`SHRINK`, one step of 8 x 32 tokens), its hub tasks pointed at fixture files
(`--config.tasks.<t>.data_dir`, tests/finetune_fixtures.py) and its `hf:` hub checkpoint at a
tiny random transformers checkpoint of the same architecture (`STAND_INS`; a hub name the table
does not know fails, naming it). The run must end at step 1 with a finite training loss; a LoRA
run must train exactly its adapters and task head.

The default suite runs one case per folder, the first variant of its first config file (bert_glue
task=mrpc, bert_conll03_ner, bert_squad task=squad_v2, lora_roberta_glue task=mrpc,method=lora,
and any new folder's first); `pytest -m slow` runs the others (27 cases in all today).
"""
import glob
import importlib.util
import json
import math
import os

import pytest

from conftest import REPO, require, run_cli
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


def cases():
  out, folders = [], set()
  for path in config_files():
    rel = os.path.relpath(path, REPO)
    folder = rel.split(os.sep)[1]
    for variant in getattr(load(path), "VARIANTS", None) or ("",):
      marks = () if folder not in folders else (pytest.mark.slow,)
      folders.add(folder)
      out.append(pytest.param(rel, variant, marks=marks,
                              id=f"{folder}/{os.path.basename(rel)}:{variant or 'default'}"))
  return out


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


@pytest.mark.parametrize("config_file, variant", cases())
def test_one_training_step(config_file, variant, tmp_path, stand_ins):
  config = load(os.path.join(REPO, config_file)).get_config(variant or None)
  workdir = tmp_path / "run"
  argv = [f"--config={config_file}" + (f":{variant}" if variant else ""), f"--workdir={workdir}",
          *SHRINK, *hub_overrides(config, tmp_path)]
  weights = config.init.weights
  if weights.startswith("hf:") and not os.path.isdir(weights[3:]):
    if weights[3:] not in STAND_INS:
      pytest.fail(f"{config_file} starts from {weights!r}: add a tiny stand-in to STAND_INS")
    argv.append(f"--config.init.weights=hf:{stand_ins(STAND_INS[weights[3:]])}")
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
