"""Counter-based random numbers: a uniform draw is a pure function of (seed, row, stream, slot).

The pipeline builds a whole batch at once, yet every example's randomness must depend only on
the run's seed and the example's global index (so a resumed run, or a host building only its
rows, sees exactly the same corruption). A per-example `np.random.Generator` gives that but costs
tens of microseconds to create per row; hashing the key with SplitMix64's finaliser gives it for
a (rows x slots) array in one vectorised pass.
"""
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijection on uint64 with full avalanche."""
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def uniform(seed: int, rows: np.ndarray, stream: int, slots: int) -> np.ndarray:
  """Floats in [0, 1) of shape (len(rows), slots), independent across every key component."""
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed % 2**64) + _GOLDEN * np.asarray(rows, np.uint64)[:, None])
    key = _mix(key ^ (_GOLDEN * np.uint64(stream + 1)))
    bits = _mix(key + _GOLDEN * (np.arange(slots, dtype=np.uint64)[None, :] + np.uint64(1)))
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def integers(seed: int, rows: np.ndarray, stream: int, slots: int, high) -> np.ndarray:
  """Integers in [0, high) (high a scalar or per-row array), shaped like `uniform`."""
  high = np.asarray(high, np.int64)
  if high.ndim:
    high = high[:, None]
  return np.minimum((uniform(seed, rows, stream, slots) * high).astype(np.int64), high - 1)
