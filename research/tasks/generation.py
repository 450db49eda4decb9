"""Generative fine-tuning (prompt -> completion) of a decoder, evaluated by what it writes.

Training rows are `research.data.generation` examples (prompt, completion, EOS; the loss on the
completion and EOS only: `objectives.completion_lm`), several packed whole into each row with
segment ids (`research.data.packing.pack_examples`): no attention across examples, positions
restart at each. The model's 'lm' head is the decoder's tied one.

Evaluation of a split:
  loss, perplexity   the completion tokens' mean cross-entropy (through the jitted eval step,
                     summed as (sum, count) over the whole split) and its exp
  exact_match, f1, rouge_l   greedy decoding (`research.generate`, at most `max_new_tokens`) of
                     the split's first `decode_examples` prompts (0: all), scored against their
                     completions (`research.evaluate.generation`, percent)
At the final evaluation each split's prompts, references and generations are written to
REPORTS/<split>_<task>_generations.jsonl.
"""
import json
import logging
import math
import os

import numpy as np

from research import generate as generate_lib
from research import objectives as objectives_lib
from research.data import encoding, packing
from research.data import generation as generation_data
from research.evaluate import generation as metrics_lib
from research.tasks.base import EvalSplit, Task

log = logging.getLogger(__name__)
HEAD = "lm"


class GenerationTask(Task):
  final_splits = ("test", "eval")
  heads = (HEAD,)

  def __init__(self, name, task_cfg, rows, tokenizer, config, head=HEAD, names=None):
    del head, names  # the decoder's own tied 'lm' head; no labels
    self.name, self.kind, self.tokenizer = name, "generation", tokenizer
    self.template = task_cfg.get("template", "plain")
    self.max_new_tokens = task_cfg.get("max_new_tokens", 64)
    self.decode_examples = task_cfg.get("decode_examples", 0)
    self.objectives = (objectives_lib.completion_lm(name),)
    seq_len, batch = config.data.seq_len, config.train.batch_size
    self.decode_batch = batch
    self.stats, packed, self.rows = {}, {}, {}
    for split, split_rows in rows.items():
      examples, truncated = generation_data.encode(tokenizer, split_rows, self.template, seq_len)
      if truncated:
        log.warning("task %s, %s split: %d of %d examples longer than %d tokens were truncated "
                    "(the prompt from the left)", name, split, truncated, len(split_rows), seq_len)
      packed_rows = packing.pack_examples(examples, seq_len)
      packed_rows["attention_mask"] = (packed_rows["segment_ids"] > 0).astype(np.int32)
      packed[split] = [{k: v[i] for k, v in packed_rows.items()}
                       for i in range(len(packed_rows["input_ids"]))]
      self.stats.update({f"data/{split}_rows": len(split_rows),
                         f"data/{split}_truncated": int(truncated),
                         f"data/{split}_packed_rows": len(packed[split])})
      self.rows[split] = split_rows
    self.train_size = len(rows["train"])
    self.train = encoding.train_batches(packed["train"], config)
    self.splits = {s: EvalSplit(p, batch, **encoding.host_info()) for s, p in packed.items()
                   if s != "train"}
    self.prompt_budget = max(seq_len - self.max_new_tokens, 1)

  def eval_outputs(self, outputs, batch):
    return objectives_lib.completion_sums_per_row(outputs, batch)

  def evaluate(self, split, context) -> dict:
    sums = self.splits[split].gather(context)
    loss = float(sums["loss"].sum() / max(sums["tokens"].sum(), 1.0))
    result = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
              "accuracy": float(sums["accuracy"].sum() / max(sums["tokens"].sum(), 1.0))}
    rows = self.rows[split][:self.decode_examples or None]
    prompts = generation_data.generation_prompts(self.tokenizer, rows, self.template,
                                                 self.prompt_budget)
    generated = self.generate(context, prompts)
    references = [r["completion"] for r in rows]
    result.update(metrics_lib.generation_metrics(generated, references))
    for r, g in list(zip(rows, generated))[:2]:
      log.info("%s %s: prompt %r -> %r (reference %r)", split, self.name, r["prompt"], g,
               r["completion"])
    if context.report_dir:
      self._report(split, rows, prompts, references, generated, context.report_dir)
    return {f"{split}/{self.name}/{k}": v for k, v in result.items()}

  def generate(self, context, prompts: list[str]) -> list[str]:
    """Greedy completions of `prompts`, `decode_batch` at a time, on the run's mesh."""
    settings = generate_lib.Settings(max_new_tokens=self.max_new_tokens, strategy="greedy")
    return generate_lib.generate(context.params, context.model_cfg, self.tokenizer, prompts,
                                 settings, mesh=context.mesh, rules=context.rules,
                                 batch_size=self.decode_batch)

  def _report(self, split, rows, prompts, references, generated, report_dir):
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, f"{split}_{self.name}_generations.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      for r, p, ref, g in zip(rows, prompts, references, generated):
        f.write(json.dumps({"prompt": r["prompt"], "input": p, "reference": ref, "generated": g},
                           ensure_ascii=False) + "\n")
    log.info("%s %s: %d generations written to %s", split, self.name, len(generated), path)
