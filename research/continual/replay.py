"""Experience replay: a fixed-size reservoir of earlier stages' examples, mixed into each batch.

The reservoir (Vitter's algorithm R) sees every training example of a finished stage once, in
index order, and keeps a uniform sample of all examples seen so far, at most `size` of them:
example t (0-based over every stage) takes a random slot in [0, t] and enters if that slot is
below `size`. Its random draws are keyed by (seed, stage), so the buffer after each stage is a
pure function of the config. The buffer a stage trains with is saved in the stage's workdir
(`replay.json`, written before its first step); a resumed stage reads it back, it is never
redrawn.

The sampler is step-indexed like the rest of the pipeline: the replayed rows of a stage's step s
are drawn with keys (seed, stage, s) alone, so any step's batch is known without replaying the
steps before it, and a resumed run gets the uninterrupted run's batches.
"""
import json
import os

import numpy as np

BUFFER_FILE = "replay.json"


def fill(buffer: dict, stage: int, num_examples: int, size: int, seed: int) -> dict:
  """The reservoir after stage `stage`'s `num_examples` examples: {'seen', 'items': [[stage,
  example index], ...]} (`buffer` is the one before it; an empty buffer is {'seen': 0, ...})."""
  items = [list(item) for item in buffer["items"]]
  seen = buffer["seen"]
  rng = np.random.default_rng([seed, stage])
  for example in range(num_examples):
    if len(items) < size:
      items.append([stage, example])
    else:
      slot = int(rng.integers(0, seen + 1))
      if slot < size:
        items[slot] = [stage, example]
    seen += 1
  return {"seen": seen, "items": items}


EMPTY = {"seen": 0, "items": []}


def save(buffer: dict, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, BUFFER_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(buffer, f)
  os.replace(path + ".tmp", path)


def load(workdir: str) -> dict | None:
  path = os.path.join(workdir, BUFFER_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def replayed_rows(seed: int, stage: int, step: int, buffer_size: int, count: int) -> np.ndarray:
  """Buffer positions of the `count` rows replayed at `step` of `stage` (with replacement)."""
  return np.random.default_rng([seed, stage, step, 1]).integers(0, buffer_size, count)


class MixedBatches:
  """Step-indexed batches of a stage with replay: per global batch, `replayed` rows from the
  buffer (`replayed_rows`) then the rest from the stage's own stream (`current`, a
  `StepIndexedBatches` of the remaining rows). Each host builds its share of both parts."""

  def __init__(self, current, buffer_features: list, replayed: int, seed: int, stage: int, *,
               process_index: int = 0, process_count: int = 1):
    self.current, self.features, self.replayed = current, buffer_features, replayed
    self.seed, self.stage = seed, stage
    self.share = replayed // process_count
    self.offset = process_index * self.share

  def host_batch(self, step: int) -> dict:
    positions = replayed_rows(self.seed, self.stage, step, len(self.features), self.replayed)
    rows = [self.features[int(p)] for p in positions[self.offset:self.offset + self.share]]
    own = self.current.host_batch(step)
    return {k: np.concatenate([np.stack([r[k] for r in rows]), own[k]]) for k in own}
