"""Data: documents -> tokenizer -> examples -> step-indexed, per-host batches.

`build(config, workdir)` is the data section's one entry point; the trainer never looks further.
"""
import dataclasses
import math

import jax
import numpy as np
import tokenizers

from research import objectives
from research.data import examples as examples_lib
from research.data import sources, tokenizer as tokenizer_lib
from research.data.pipeline import StepIndexedBatches, device_batches
from research.data.tokenizer import SpecialIds


@dataclasses.dataclass
class Data:
  train: StepIndexedBatches
  eval: StepIndexedBatches
  eval_steps: int  # batches in one evaluation (a fixed set: same rows, same masks every time)
  tokenizer: tokenizers.Tokenizer
  stats: dict  # documents, examples and tokens per split, for the log


def tokenize(tok: tokenizers.Tokenizer, texts) -> list[np.ndarray]:
  return [np.asarray(e.ids, np.int32) for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def build(config, workdir: str) -> Data:
  """Loads, tokenizes and wraps the configured source into train and eval batches.

  Evaluation with `evals.batches = 0` is one pass over the eval rows: the last batch is filled
  up with rows whose `row_mask` is 0, which every objective leaves out of its sums and counts.
  """
  data_cfg, kind = config.data, config.model.kind
  stats = {}
  docs = sources.load_documents(data_cfg, stats)
  tok = tokenizer_lib.get_tokenizer(data_cfg, kind, docs["train"], workdir)
  specials = SpecialIds.of(tok)
  token_docs = {split: tokenize(tok, texts) for split, texts in docs.items()}
  counts = np.bincount(np.concatenate(token_docs["train"]), minlength=tok.get_vocab_size())
  counts[list(specials.special)] = 0
  most_frequent = int(counts.argmax())  # the unigram baseline always predicts this token

  def make(split, seed):
    if kind == "encoder":
      return examples_lib.EncoderExamples(
          token_docs[split], seq_len=data_cfg.seq_len, specials=specials,
          vocab_size=tok.get_vocab_size(), objective_cfg=config.objective, seed=seed,
          max_predictions=objectives.max_predictions(config.objective, data_cfg.seq_len))
    return examples_lib.DecoderExamples(token_docs[split], seq_len=data_cfg.seq_len,
                                        specials=specials, seed=seed)

  batch = config.train.batch_size
  host = dict(process_index=jax.process_index(), process_count=jax.process_count(),
              extra={"unigram_top": most_frequent})
  train_examples = make("train", config.train.seed)
  eval_examples = make("eval", config.train.seed + 1000)
  train_rows, eval_rows = len(train_examples), len(eval_examples)
  train = StepIndexedBatches(train_examples, batch, **host)
  one_pass = not config.evals.batches
  eval_ = StepIndexedBatches(eval_examples, batch, limit=eval_rows if one_pass else None, **host)
  eval_steps = math.ceil(eval_rows / batch) if one_pass else config.evals.batches
  stats.update({f"data/{split}_documents": len(d) for split, d in docs.items()})
  stats.update({f"data/{split}_tokens": int(sum(map(len, d))) for split, d in token_docs.items()})
  stats.update({"data/train_rows": train_rows, "data/eval_rows": eval_rows})
  return Data(train=train, eval=eval_, eval_steps=eval_steps, tokenizer=tok, stats=stats)


__all__ = ["Data", "build", "device_batches", "StepIndexedBatches", "SpecialIds"]
