r"""Continual learning: tasks learned one after another in one run, forgetting measured.

BBC News, class-incremental (business/entertainment, then politics/sports, then tech; one head
whose classes grow), naive sequential fine-tuning of all-MiniLM-L6-v2:
  python -m research.main --config=configs/continual.py --workdir=/tmp/cl \
      --config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2
Task-incremental (three tasks, a head each; the task id is known at test time), with EWC:
  python -m research.main --config=configs/continual.py:sequence=task,method=ewc \
      --workdir=/tmp/cl_ewc --config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2
Your own stages (tasks of configs/finetune.py, optionally restricted to classes), e.g. two
task-incremental ones after sequence=task:
  --config.continual.stages=bbc_news:business/tech+bbc_news:sports/politics
Quick start, 2 CPU cores, a tiny model from scratch (~1 minute):
  python -m research.main --config=configs/continual.py:runlocal --workdir=/tmp/cl_local

Arguments (after ':'): sequence = class | task (the two BBC News sequences of the README's
table); method = naive | ewc | l2sp | replay | lora; runlocal. `config.continual` is documented
in research/continual/settings.py; `train.steps` is each stage's length. The run writes
WORKDIR/stages/stage<k>_<task>/ (each a workdir like any run's), metrics.jsonl (a row of the
accuracy matrix per stage), summary.json (continual/average_accuracy, bwt, forgetting, R) and
continual_R.png / continual_accuracy.png.

Expected (2-core CPU, measured; README "Continual learning"): from all-MiniLM-L6-v2, 50 steps of
32 x 64 tokens per stage, ~3 minutes a run: class-incremental naive fine-tuning forgets every
earlier task (final average test accuracy 0.333, BWT -1.0) and replay recovers most of it (0.934,
BWT -0.094); task-incremental naive fine-tuning BWT -0.054, a LoRA per task 0 (average 0.992).
"""
import ml_collections

from research import config_lib
from research.errors import UserError
from research.tasks import finetuning

SEQUENCES = {
    # One head over the five topics, learned two, two, then one at a time.
    "class": ("class", "bbc_news:business/entertainment+bbc_news:politics/sports+bbc_news:tech"),
    # Three two-topic tasks, a head each (five topics make two disjoint pairs; the third reuses
    # entertainment against tech).
    "task": ("task", "bbc_news:business/entertainment+bbc_news:politics/sports+"
                     "bbc_news:entertainment/tech"),
}
METHODS = ("naive", "ewc", "l2sp", "replay", "lora")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, sequence="class", method="naive", runlocal=False)
  if arg.sequence not in SEQUENCES:
    raise UserError(f"sequence must be one of {sorted(SEQUENCES)}, got {arg.sequence!r}")
  if arg.method not in METHODS:
    raise UserError(f"method must be one of {list(METHODS)}, got {arg.method!r}")
  scenario, stages = SEQUENCES[arg.sequence]
  config = config_lib.common(ml_collections.ConfigDict())
  # The tasks the stages read, as configs/finetune.py defines them.
  config.tasks = {"bbc_news": dict(kind="classification", source="bbc_news", data_dir="")}
  config.continual = dict(
      stages=stages, scenario=scenario, method=arg.method,
      ewc=dict(strength=1e7, decay=1.0, fisher_examples=256),
      l2sp=dict(strength=0.1),
      replay=dict(size=200, ratio=0.25),
      reference="", split="test",
      stage=0, previous="", base="")  # set by the run for each stage
  config.model = config_lib.model(finetuning.model_kind(config), "tiny" if arg.runlocal else "base",
                                  dtype="float32")
  # A BBC News topic shows in an article's first 64 tokens (MiniLM: test accuracy ~0.98).
  config.data = dict(seq_len=64, tokenizer="",
                     vocab_size=4096 if arg.runlocal else 30522)
  config.optim = config_lib.optim(learning_rate=1e-3 if arg.runlocal else 1e-4)
  config.optim.b2 = 0.999
  steps = 30 if arg.runlocal else 50
  config.schedule = dict(warmup_steps=steps // 10, decay="linear", end_factor=0.0)
  config.train = config_lib.train(steps=steps, batch_size=16 if arg.runlocal else 32)
  config.evals = dict(every_steps=steps, best_metric="", best_mode="max", patience=0)
  config.ckpt.every_steps = 10 if arg.runlocal else 20
  config.ckpt.keep = 2
  config.logging.every_steps = 10
  if arg.method == "lora":
    config_lib.use_peft(config, "lora")
  return config
