"""Data: documents -> tokenizer -> examples -> step-indexed, per-host batches.

`build(config, workdir)` is the data section's one entry point; the trainer never looks further.
"""
import dataclasses
import math

import jax
import numpy as np
import tokenizers

from research import objectives
from research.data import cache as data_cache
from research.data import examples as examples_lib
from research.data import prepared, sources, tokenizer as tokenizer_lib
from research.data.pipeline import StepIndexedBatches, device_batches
from research.data.tokenizer import SpecialIds


@dataclasses.dataclass
class Data:
  train: StepIndexedBatches
  eval: StepIndexedBatches
  eval_steps: int  # batches in one evaluation (a fixed set: same rows, same masks every time)
  tokenizer: tokenizers.Tokenizer
  stats: dict  # documents, examples and tokens per split, for the log


def build(config, workdir: str) -> Data:
  """Loads, tokenizes and wraps the configured source into train and eval batches.

  `data.source = 'prepared:DIR'` reads the rows `python -m research.data.prepare` wrote to DIR,
  a batch at a time; any other source is read and tokenized into memory here. Both feed the same
  row builders, so they give the same batches.

  Evaluation with `evals.batches = 0` is one pass over the eval rows: the last batch is filled
  up with rows whose `row_mask` is 0, which every objective leaves out of its sums and counts.
  """
  data_cfg, kind = config.data, config.model.kind
  if prepared.is_prepared(data_cfg.source):
    corpus = prepared.open_for(config)
    tok, stats, most_frequent = corpus.tokenizer, corpus.stats, corpus.metadata["most_frequent"]
    stores = {split: corpus.rows(split) for split in prepared.SPLITS}
  else:
    tok, stores, most_frequent, stats = _in_memory(config, workdir)
  specials = SpecialIds.of(tok)

  def make(split, seed):
    if kind == "encoder":
      return examples_lib.EncoderExamples(
          stores[split], seq_len=data_cfg.seq_len, specials=specials,
          vocab_size=tok.get_vocab_size(), objective_cfg=config.objective, seed=seed,
          max_predictions=objectives.max_predictions(config.objective, data_cfg.seq_len))
    return examples_lib.DecoderExamples(stores[split], seq_len=data_cfg.seq_len, seed=seed)

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
  return Data(train=train, eval=eval_, eval_steps=eval_steps, tokenizer=tok, stats=stats)


def _in_memory(config, workdir: str):
  """(tokenizer, a DenseRows store per split, the commonest training token, stats): every
  document read and tokenized now (or the tokenizer and ids read from the data cache, which
  holds what the same texts gave before: research/data/cache.py)."""
  data_cfg, kind = config.data, config.model.kind
  stats = {}
  docs = sources.load_documents(data_cfg, stats)
  cache = data_cache.of_config(config)
  tok = tokenizer_lib.get_tokenizer(data_cfg, kind, [docs["train"]], workdir, cache)
  specials = SpecialIds.of(tok)
  pair = kind == "encoder" and config.objective.sentence_task != "none"
  stores = {}
  for split, texts in docs.items():
    token_docs = cache.token_ids(tok, texts, tokenizer_lib.token_ids)
    if split == "train":
      counts = np.bincount(np.concatenate(token_docs), minlength=tok.get_vocab_size())
    maker = examples_lib.RowMaker(kind, data_cfg.seq_len, pair, specials.eos)
    stores[split] = examples_lib.DenseRows(maker.add(token_docs) + maker.finish())
    stats.update({f"data/{split}_documents": len(texts),
                  f"data/{split}_tokens": int(sum(map(len, token_docs))),
                  f"data/{split}_rows": len(stores[split])})
  return tok, stores, examples_lib.most_frequent(counts, specials), stats


__all__ = ["Data", "build", "device_batches", "StepIndexedBatches", "SpecialIds"]
