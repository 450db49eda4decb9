r"""Fine-tune an encoder on one task or several (multi-task), and evaluate it.

Quick start, 2 CPU cores, embedded BBC News topic classification (5 classes; fixed stratified
80/10/10 split), from scratch:
  python -m research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir=/tmp/ft
From the runlocal MLM checkpoint (weights only; the classification head is new):
  python -m research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir=/tmp/ft2 \
      --config.init.weights=/tmp/mlm
From a Hugging Face checkpoint directory (its tokenizer comes along):
  python -m research.main --config=configs/finetune.py:task=mrpc --workdir=/tmp/mrpc \
      --config.init.weights=hf:ckpt/bert-base-uncased
Distilled into a 1-block student starting from the run above's first block (the teacher runs
frozen inside the train step; research/compress/distill.py documents config.distill):
  python -m research.compress --workdir=/tmp/ft2 --method=distill --out=/tmp/ft2_1block \
      --distill_layers=1
Your own files (JSONL or CSV with columns text[, text_pair], label; string labels are fine):
  python -m research.main --config=configs/finetune.py:task=local,train=tr.csv,eval=dev.csv,runlocal \
      --workdir=/tmp/mine
Generative fine-tuning of a decoder (prompt -> completion, loss on the completion only), from
the runlocal causal-LM checkpoint: BBC News headline -> first sentence (held-out articles), or
your JSONL files with 'prompt' and 'completion' fields:
  python -m research.main --config=configs/clm.py:runlocal --workdir=/tmp/clm
  python -m research.main --config=configs/finetune.py:task=bbc_headlines,runlocal \
      --workdir=/tmp/headlines --config.init.weights=/tmp/clm
  python -m research.main --config=configs/finetune.py:task=local,kind=generation,train=tr.jsonl,eval=dev.jsonl,runlocal \
      --workdir=/tmp/gen --config.init.weights=/tmp/clm
Several tasks at once, one encoder and one head each, sampled by size ** (1 / T):
  python -m research.main --config=configs/finetune.py:task=mrpc+rte+stsb --workdir=/tmp/glue3 \
      --config.init.weights=hf:ckpt/bert-base-uncased --config.mixture.kind=temperature

Arguments (after ':'): task = bbc_news | cola | sst2 | mrpc | qqp | stsb | mnli | qnli | rte |
wnli | conll2003 | squad | squad_v2 | bbc_headlines | local (several joined by '+'); size (as in
mlm.py); runlocal; for task=local: train=, eval=, test= (paths) and kind=classification |
multilabel | regression | generation; data_dir= (a directory of <split>.jsonl files to read
instead of the hub); template=plain | chat (generation: see research/data/generation.py).
A generation task (bbc_headlines, kind=generation) trains a decoder (as configs/clm.py builds
it, so `init.weights` of a clm.py run of the same size loads every weight) and trains alone.

Expected (2-core CPU, measured): task=bbc_news,runlocal reaches eval/test accuracy ~0.9 from
scratch in ~2 minutes; see README "Fine-tuning" for the MLM-initialised and TF-IDF baselines.
task=bbc_headlines,runlocal from the runlocal clm.py checkpoint (2-core CPU, measured: ~3 minutes
unloaded): test/bbc_headlines/rouge_l 10.8 and f1 6.2 (the pretrained decoder as it is, one
step at learning rate 0: 6.5 and 0.3; from scratch: 10.4 and 7.1), perplexity 263 (455; 396).
"""
import ml_collections

from research import config_lib
from research.errors import UserError
from research.data.generation import TEMPLATES
from research.data.labelled import GLUE
from research.tasks import finetuning

# task -> (kind, source, metric that picks the best checkpoint, sequence length)
TASKS = {"bbc_news": ("classification", "bbc_news", "accuracy", 256),
         "conll2003": ("token_classification", "conll2003", "f1", 128),
         "squad": ("qa", "squad", "f1", 384), "squad_v2": ("qa", "squad_v2", "f1", 384),
         "bbc_headlines": ("generation", "bbc_headlines", "rouge_l", 128),
         "local": ("classification", "local", "accuracy", 128)}
TASKS.update({t: (kind, f"glue/{t}", "score", 128) for t, (_, _, kind) in GLUE.items()})


def task_config(name, arg):
  kind, source, metric, seq_len = TASKS[name]
  cfg = dict(kind=kind, source=source, data_dir=arg.data_dir)
  if name == "local":
    kind = arg.kind
    cfg.update(kind=kind, train=arg.train, eval=arg.eval, test=arg.test, text_field="text",
               text_pair_field="text_pair", label_field="label")
    metric = {"regression": "pearson", "multilabel": "f1_micro",
              "generation": "rouge_l"}.get(kind, "accuracy")
  if kind == "qa":
    cfg.update(doc_stride=128, max_question_len=64, n_best=20, max_answer_len=30,
               null_threshold=0.0)
  if kind == "generation":
    # max_new_tokens: the greedy decoding budget of evaluation; decode_examples: how many of a
    # split's prompts evaluation decodes (0: all; the loss and perplexity cover every example).
    cfg.update(template=arg.template, prompt_field="prompt", completion_field="completion",
               max_new_tokens=32 if arg.runlocal else 64, decode_examples=64 if arg.runlocal else 0)
  return cfg, metric, seq_len


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, task="bbc_news", size="base", runlocal=False, train="", eval="",
                             test="", kind="classification", data_dir="", peft="none",
                             template="plain")
  names = arg.task.split("+")
  unknown = [n for n in names if n not in TASKS]
  if unknown:
    raise UserError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
  if arg.template not in TEMPLATES:
    raise UserError(f"template must be one of {sorted(TEMPLATES)}, got {arg.template!r}")
  config = config_lib.common(ml_collections.ConfigDict())
  config.tasks = {}
  metrics, seq_len = [], 0
  for name in names:
    cfg, metric, task_seq_len = task_config(name, arg)
    config.tasks[name] = cfg
    metrics.append(f"eval/{name}/{metric}")
    seq_len = max(seq_len, task_seq_len)
  kind = finetuning.model_kind(config)
  config.model = config_lib.model(kind, "tiny" if arg.runlocal else arg.size,
                                  dtype="float32" if arg.runlocal else "bfloat16")
  config.mixture = dict(kind="proportional", temperature=2.0)
  config.data = dict(seq_len=seq_len, tokenizer="",
                     vocab_size=30522 if kind == "encoder" else 50257)
  config.optim = config_lib.optim(learning_rate=3e-5)
  config.optim.b2 = 0.999
  config.schedule = dict(warmup_steps=300, decay="linear", end_factor=0.0)
  config.train = config_lib.train(steps=3000, batch_size=32)
  # best_metric: the eval metric whose best value's checkpoint is kept (WORKDIR/best) and
  # evaluated on the test split; patience: evaluations without improvement before stopping
  # early (0 = never).
  config.evals = dict(every_steps=500, best_metric=metrics[0] if len(names) == 1 else "",
                      best_mode="max", patience=0)
  config.ckpt.every_steps = 1000

  if arg.runlocal:
    config.data.update(vocab_size=8192, seq_len=min(seq_len, 128))
    config.optim.learning_rate = 1e-3
    config.schedule.warmup_steps = 30
    config.train.update(steps=300)
    config.evals.every_steps = 100
    config.ckpt.every_steps = 100
    config.logging.every_steps = 20
  config_lib.use_peft(config, arg.peft)
  return config
