"""Multi-task sampling: which task each training step draws its batch from.

The whole schedule is a pure function of (sizes, kind, temperature, seed) and the step, so a
resumed run continues it exactly. Weights: 'proportional' to each task's training rows, or
'temperature' sampling, size ** (1 / T) (T = 1 is proportional, large T tends to uniform).
"""
import numpy as np

from research.errors import UserError

BLOCK = 4096  # steps drawn per block; block b is seeded by (seed, b), so any step is cheap to find


def weights(sizes, kind: str, temperature: float) -> np.ndarray:
  sizes = np.asarray(sizes, np.float64)
  if kind == "proportional":
    w = sizes
  elif kind == "temperature":
    if not 0 < temperature < np.inf:  # written so that NaN, which fails every test, fails
      raise UserError(f"mixture.temperature must be finite and > 0, got {temperature}")
    w = sizes ** (1.0 / temperature)
  else:
    raise UserError(f"mixture.kind must be 'proportional' or 'temperature', got {kind!r}")
  return w / w.sum()


class Schedule:
  """task(step) and the task's own step counter at that step (its batch index)."""

  def __init__(self, sizes, kind="proportional", temperature=1.0, seed=0):
    self.p = weights(sizes, kind, temperature)
    self.seed = seed
    self._blocks = {}

  def _block(self, b):
    if b not in self._blocks:
      choice = np.random.default_rng([self.seed, b]).choice(len(self.p), size=BLOCK, p=self.p)
      counts = np.stack([np.cumsum(choice == t) for t in range(len(self.p))])  # inclusive
      before = self._block(b - 1)[2] if b else np.zeros(len(self.p), np.int64)
      self._blocks[b] = (choice, counts, before + counts[:, -1])
    return self._blocks[b]

  def __call__(self, step: int) -> tuple[int, int]:
    b, i = divmod(step, BLOCK)
    choice, counts, _ = self._block(b)
    task = int(choice[i])
    before = self._block(b - 1)[2][task] if b else 0
    return task, int(before + counts[task, i] - 1)
