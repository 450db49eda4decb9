r"""BERT-base fine-tuned for SQuAD v1.1 or v2.0 extractive question answering (Devlin et al., 2019,
section 4.2-4.3; experiments/bert_squad/README.md).

  python -m research.main --config=experiments/bert_squad/configs/squad.py:task=squad \
      --workdir=/tmp/bert_squad/v1.1
  python -m research.main --config=experiments/bert_squad/configs/squad.py:task=squad_v2 \
      --workdir=/tmp/bert_squad/v2

Argument (after ':'): task = squad (v1.1, default) | squad_v2. Built on configs/finetune.py
(task=TASK,size=base): windows of 384 tokens over the context with a stride of 128, questions cut
to 64 tokens, answers up to 30 tokens from the 20 best starts and ends (v2.0: "no answer" when
the null score beats the best span, threshold 0). From bert-base-uncased
(as transformers' run_qa.py, whose reference run reaches v1.1 dev EM 81.2 / F1 88.5 in 24 min on
one V100), AdamW at 5e-5 with weight decay 0.01, 10% linear warmup then linear decay: v1.1 3
epochs of batch 32, v2.0 2 epochs of batch 48 (the paper's settings);
the final model is evaluated (no best-checkpoint pick).
Expected (dev): v1.1 EM 80.8 / F1 88.5 (the paper, Table 2); v2.0: see the README (the paper
reports only BERT-large on v2.0).
"""
from research import config_lib
from research.errors import UserError

RECIPES = {"squad": (3, 32), "squad_v2": (2, 48)}  # task: (epochs, batch), Devlin et al.
VARIANTS = tuple(f"task={t}" for t in ("squad_v2", "squad"))  # v2 first: the default suite's case


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, task="squad")
  if arg.task not in RECIPES:
    raise UserError(f"task must be one of {sorted(RECIPES)}, got {arg.task!r}")
  epochs, batch = RECIPES[arg.task]
  config = config_lib.load_config_file("finetune", f"task={arg.task},size=base")
  config.init.weights = "hf:bert-base-uncased"
  config.optim.update(learning_rate=5e-5, weight_decay=0.01)
  epoch = config_lib.epoch_steps(arg.task, batch)
  config.train.update(steps=epochs * epoch, batch_size=batch)
  config.schedule.update(warmup_steps=epochs * epoch // 10, decay="linear", end_factor=0.0)
  config.evals.update(every_steps=epoch, best_metric="")
  config.ckpt.every_steps = epoch
  return config
