"""research/checkpoint.py's BestCheckpoint: which evaluation is the best in either mode, what a
tie does, when patience runs out, and that a resumed run recovers the same state."""
import numpy as np
import pytest

from research import checkpoint
from research.errors import UserError

METRIC = "eval/t/score"
STEPS = (10, 20, 30, 40, 50, 60)
VALUES = (0.5, 0.7, 0.3, 0.3, 0.6, 0.9)
# Worked by hand from VALUES, a tie never improving: (improved?, evaluations since the best).
EXPECTED = {
    "max": ([True, True, False, False, False, True], [0, 0, 1, 2, 3, 0], 60),
    "min": ([True, False, True, False, False, False], [0, 1, 0, 1, 2, 3], 30),
}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_evaluation_ties_and_patience(mode, tmp_path):
  improved, stale, best_step = EXPECTED[mode]
  best = checkpoint.BestCheckpoint(str(tmp_path / "best"), METRIC, mode, patience=3)
  got_improved, got_stale, got_stop = [], [], []
  for step, value in zip(STEPS, VALUES):
    got_improved.append(best.update(step, {METRIC: value}, {"w": np.full(2, step, np.float32)}))
    got_stale.append(best.stale)
    got_stop.append(best.should_stop)
  assert got_improved == improved and got_stale == stale
  assert got_stop == [s >= 3 for s in stale]
  assert best.step == best_step and best.value == VALUES[STEPS.index(best_step)]
  np.testing.assert_array_equal(best.restore({"w": np.zeros(2, np.float32)})["w"], [best_step] * 2)
  best.close()
  # A resumed run replays the metrics history: the same best, the same count towards patience.
  history = [{"step": s, METRIC: v} for s, v in zip(STEPS, VALUES)]
  again = checkpoint.BestCheckpoint(str(tmp_path / "best"), METRIC, mode, 3, history)
  assert (again.step, again.value, again.stale) == (best_step, best.value, stale[-1])
  again.close()


def test_without_patience_it_never_stops_and_a_bad_mode_is_refused(tmp_path):
  history = [{"step": s, METRIC: v} for s, v in zip(STEPS, VALUES)]
  best = checkpoint.BestCheckpoint(str(tmp_path / "best"), METRIC, "min", 0, history)
  assert best.stale == 3 and not best.should_stop
  best.close()
  with pytest.raises(UserError, match="evals.best_mode must be 'max' or 'min', got 'lowest'"):
    checkpoint.BestCheckpoint(str(tmp_path / "other"), METRIC, "lowest")
