r"""BERT-base fine-tuned on one GLUE task with transformers' `run_glue.py` recipe (its dev-set table
is this reproduction's target; experiments/bert_glue/README.md).

  python -m research.main --config=experiments/bert_glue/configs/glue.py:task=mrpc \
      --workdir=/tmp/bert_glue/mrpc

Argument (after ':'): task = cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte (default mrpc).
Built on configs/finetune.py (task=TASK,size=base), with run_glue's settings: bert-base-cased
(the checkpoint run_glue's table used), 128 tokens, batch 32, AdamW at 2e-5 (betas 0.9/0.999,
eps 1e-8, no weight decay, gradient norm clipped at 1), no warmup, linear decay to 0 over 3
epochs (MRPC: 5), evaluated once an epoch; the reported number is the last evaluation (run_glue
keeps the final model, so no best checkpoint is picked).
Expected (dev): CoLA MCC 56.5, SST-2 acc 92.3, MRPC F1 88.9, STS-B Pearson 88.6, QQP acc 90.7,
MNLI-m acc 83.9, QNLI acc 90.7, RTE acc 65.7; one Titan RTX took 2 min (MRPC) to 2.6 h (MNLI).
"""
from research import config_lib
from research.errors import UserError

EPOCHS = {"mrpc": 5, "cola": 3, "sst2": 3, "stsb": 3, "qqp": 3, "mnli": 3, "qnli": 3, "rte": 3}
VARIANTS = tuple(f"task={t}" for t in EPOCHS)  # every argument value (the one-step test runs each)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, task="mrpc")
  if arg.task not in EPOCHS:
    raise UserError(f"task must be one of {sorted(EPOCHS)}, got {arg.task!r}")
  config = config_lib.load_config_file("finetune", f"task={arg.task},size=base")
  config.init.weights = "hf:bert-base-cased"
  config.data.seq_len = 128
  config.optim.update(learning_rate=2e-5, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0)
  epoch = config_lib.epoch_steps(arg.task, 32)
  config.train.update(steps=EPOCHS[arg.task] * epoch, batch_size=32)
  config.schedule.update(warmup_steps=0, decay="linear", end_factor=0.0)
  config.evals.update(every_steps=epoch, best_metric="")
  config.ckpt.every_steps = epoch
  return config
