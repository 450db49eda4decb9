"""research.data.stratified against scikit-learn's train_test_split(stratify=...), index for
index: the recorded results' splits must not move."""
import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from research.data import labelled, sources, stratified


def _sklearn(labels, test_fraction, seed):
  rows = np.arange(len(labels))
  train, test = train_test_split(rows, test_size=test_fraction, stratify=labels,
                                 random_state=seed)
  return train.tolist(), test.tolist()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("class_sizes, test_fraction", [
    ((7, 7, 7, 7), 0.3),  # equal remainders: the tie is broken at random
    ((50, 3, 20, 9, 2), 0.2),
    ((13, 29), 0.5),
    ((5, 5, 6, 6, 11, 40), 0.15),
    ((2, 2, 2), 0.5),  # the smallest classes a split allows
])
def test_the_split_is_scikit_learns(class_sizes, test_fraction, seed):
  rng = np.random.default_rng(seed)
  names = np.array(["sport", "tech", "business", "politics", "entertainment", "health"])
  labels = rng.permutation(np.repeat(names[:len(class_sizes)], class_sizes)).tolist()
  train, test = stratified.split(labels, test_fraction, seed)
  assert (train.tolist(), test.tolist()) == _sklearn(labels, test_fraction, seed)


@pytest.mark.parametrize("seed", (0, 1))
def test_bbc_news_splits_are_the_ones_recorded_results_used(seed):
  rows = [{"text": text, "text_pair": None, "label": topic}
          for topic, text in sources.read_bbc_news()]
  train, rest = train_test_split(rows, test_size=0.2, stratify=[r["label"] for r in rows],
                                 random_state=seed)
  eval_, test = train_test_split(rest, test_size=0.5, stratify=[r["label"] for r in rest],
                                 random_state=seed)
  assert labelled._bbc_news(seed) == {"train": train, "eval": eval_, "test": test}


@pytest.mark.parametrize("labels, test_fraction", [
    (["a", "a", "b"], 0.5),  # class 'b' has one row
    (["a", "a", "b", "b", "c", "c"], 0.1),  # one test row for three classes
])
def test_a_split_that_cannot_hold_every_class_on_both_sides_is_refused(labels, test_fraction):
  with pytest.raises(ValueError, match="every class needs a row on each side"):
    stratified.split(labels, test_fraction, 0)
