r"""BERT-base fine-tuned for CoNLL-2003 named-entity recognition (Devlin et al., 2019, Table 3;
experiments/bert_conll03_ner/README.md).

  python -m research.main --config=experiments/bert_conll03_ner/configs/ner.py \
      --workdir=/tmp/bert_conll03

No argument (one task). Built on configs/finetune.py (task=conll2003,size=base): each word
tagged from its first word piece, one sentence per row, 128 tokens. From bert-base-cased (case
is the strongest entity cue; the paper does not name its checkpoint for NER), batch 32, AdamW
at 5e-5 with weight decay 0.01, 10% linear warmup then linear decay, 3 epochs (the paper's grid
is batch 16/32, 5e-5/3e-5/2e-5, 2-4 epochs; it does not say which won), evaluated every epoch;
the best dev F1's checkpoint is the one evaluated on the test split.
Expected: test entity F1 92.4 (dev 96.4), which the paper reached with document context
(maximal context around each sentence); sentence by sentence, as here, is known to score lower.
"""
from research import config_lib

EPOCHS, BATCH = 3, 32
VARIANTS = ("",)  # no argument: the one-step test runs the default


def get_config(arg=None):
  config_lib.parse_arg(arg)  # no arguments
  config = config_lib.load_config_file("finetune", "task=conll2003,size=base")
  config.init.weights = "hf:bert-base-cased"
  config.data.seq_len = 128
  config.optim.update(learning_rate=5e-5, weight_decay=0.01)
  epoch = config_lib.epoch_steps("conll2003", BATCH)
  config.train.update(steps=EPOCHS * epoch, batch_size=BATCH)
  config.schedule.update(warmup_steps=EPOCHS * epoch // 10, decay="linear", end_factor=0.0)
  config.evals.update(every_steps=epoch, best_metric="eval/conll2003/f1")
  config.ckpt.every_steps = epoch
  return config
