"""The one input pipeline: step-indexed, deterministic, per-host sharded, prefetched to device.

Examples are an infinite, randomly addressable sequence: pretraining rows built a batch at a time
(`examples.EncoderExamples` / `DecoderExamples`: `rows(indices)`, every random draw keyed by
(seed, example index)), or a grain `MapDataset` of fine-tuning features, shuffled with a fresh
order each epoch. The global batch of step `s` is examples [s * B, (s + 1) * B); host `p` of `P`
builds only its rows
[s * B + p * B / P, s * B + (p + 1) * B / P). So a batch is a pure function of (seed, step): a
resumed run asks for step `s` and gets exactly the batch the uninterrupted run saw, and the only
iterator state a checkpoint needs is the next step.
"""
import collections
import concurrent.futures

import jax
import numpy as np


class StackedRows:
  """Examples kept one by one (a grain `MapDataset` of feature dicts: fine-tuning features) with
  the `rows(indices)` interface of the pretraining examples, which build whole batches."""

  def __init__(self, dataset):
    self.dataset = dataset

  def __len__(self) -> int:
    return len(self.dataset)

  def rows(self, indices) -> dict:
    rows = [self.dataset[int(i)] for i in indices]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class StepIndexedBatches:
  """Random access to this host's share of any step's global batch; `examples.rows(indices)`
  builds the rows of global example indices."""

  def __init__(self, examples, global_batch: int, *, process_index: int = 0,
               process_count: int = 1, extra: dict | None = None, limit: int | None = None):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} not divisible by {process_count} hosts")
    self.examples = examples
    self.global_batch = global_batch
    self.host_batch_size = global_batch // process_count
    self.offset = process_index * self.host_batch_size
    self.extra = extra or {}  # constant per-row fields, e.g. {'unigram_top': id}
    self.limit = limit  # rows from this global index on are padding: row_mask 0

  def host_batch(self, step: int) -> dict:
    start = step * self.global_batch + self.offset
    batch = self.examples.rows(np.arange(start, start + self.host_batch_size))
    for k, v in self.extra.items():
      batch[k] = np.full((self.host_batch_size,), v, np.int32)
    if self.limit is not None:
      batch["row_mask"] = (np.arange(start, start + self.host_batch_size) < self.limit).astype(
          np.int32)
    return batch


def to_global(host_batch: dict, sharding) -> dict:
  """Assembles the hosts' rows into global arrays laid out by `sharding` (batch dimension); the
  batch may nest dicts (a distillation run's precomputed teacher logits)."""
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), host_batch)


def device_batches(host_batch, start: int, stop: int, sharding, prefetch: int = 2):
  """Yields (step, batch on device) for steps [start, stop), building `prefetch` steps ahead.

  `host_batch(step)` returns this host's rows as a dict of arrays, or (tag, dict): the tag (e.g.
  which task a multi-task step belongs to) is passed through, as (step, (tag, batch)).
  """
  def build(step):
    out = host_batch(step)
    if isinstance(out, tuple):
      return out[0], to_global(out[1], sharding)
    return to_global(out, sharding)

  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    pending = collections.deque()
    next_step = start
    while next_step < stop and len(pending) < prefetch:
      pending.append((next_step, pool.submit(build, next_step)))
      next_step += 1
    while pending:
      step, future = pending.popleft()
      if next_step < stop:
        pending.append((next_step, pool.submit(build, next_step)))
        next_step += 1
      yield step, future.result()
