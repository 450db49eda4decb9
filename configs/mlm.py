r"""BERT-style masked-LM pretraining (MLM 80/10/10, optional NSP or SOP).

Quick start, 2 CPU cores, 2 to 3 minutes (measured: 128 s), embedded BBC News corpus:
  python -m research.main --config=configs/mlm.py:runlocal --workdir=/tmp/mlm
  Expected (2-core CPU, measured): train/loss falls from 9.05 at step 1 to ~6.4 at step 600;
  eval/mlm/accuracy ~0.106 against eval/mlm/unigram_accuracy 0.047 (always predicting the
  commonest token); 15k-25k tokens/s.

BERT-base on one GPU/TPU host (all devices data-parallel), your corpus:
  python -m research.main --config=configs/mlm.py:size=base --workdir=$HOME/runs/bert_base \
      --config.data.source='/data/corpus/*.txt'

A corpus larger than memory: tokenize it once, then train on the rows (README, "Corpora larger
than memory"):
  python -m research.data.prepare --config=configs/mlm.py:size=base --output=/data/bert_base_rows \
      --config.data.source='/data/corpus/*.txt'
  ... --config.data.source=prepared:/data/bert_base_rows

Arguments (after ':'): size=tiny|mini|small|base|large (default base: the BERT paper's shapes),
runlocal (tiny model, short run, float32 compute), sentence_task=none|nsp|sop.
"""
import ml_collections

from research import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size="base", runlocal=False, sentence_task="none")
  config = config_lib.common(ml_collections.ConfigDict())
  config.model = config_lib.model("encoder", "tiny" if arg.runlocal else arg.size,
                                  dtype="float32" if arg.runlocal else "bfloat16")
  config.objective = dict(name="mlm", mask_rate=0.15, max_predictions=-1,
                          sentence_task=arg.sentence_task, sentence_task_weight=1.0)
  config.data = dict(source="bbc_news", text_field="text", eval_fraction=0.05, seq_len=128,
                     tokenizer="", vocab_size=30522)
  config.optim = config_lib.optim(learning_rate=1e-4)
  config.schedule = dict(warmup_steps=10_000, decay="linear", end_factor=0.0)
  config.train = config_lib.train(steps=1_000_000, batch_size=256)
  config.evals = dict(every_steps=10_000, batches=0)  # batches=0: one pass over the eval split

  if arg.runlocal:
    config.data.vocab_size = 8192
    config.optim.learning_rate = 2e-3
    config.schedule.warmup_steps = 40
    config.train.update(steps=600, batch_size=32)
    config.evals.update(every_steps=100, batches=8)
    config.ckpt.every_steps = 100
    config.logging.every_steps = 20
  return config
