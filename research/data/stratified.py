"""A seeded stratified split: scikit-learn's `train_test_split(stratify=...)`, draw for draw.

The fine-tuning tasks' fixed splits (BBC News: 80/10/10 by topic, research/data/labelled.py)
were drawn with scikit-learn, and every recorded result depends on which rows landed where.
This module makes the same draws from the same `numpy.random.RandomState(seed)` stream in the
same order, so the splits are unchanged (tests/test_stratified.py checks them index for index
against scikit-learn), without importing scikit-learn: with the pandas and scipy it brings, that
import took 1.3 s of every fine-tuning command's start-up.

The draws, per split: how many of each class go to train, rounded to the nearest whole counts
that sum right (`_apportion`); then the same for test from what is left; then each class's rows
in a random order, the first ones to train and the next ones to test; then train and test each
shuffled as a whole.
"""
import math

import numpy as np


def _apportion(class_counts, draws, rng):
  """Whole counts per class, at most `class_counts`, summing to `draws`, closest to the shares
  `class_counts / total * draws`: each share rounded down, then the missing ones given to the
  classes with the largest remainders, ties between equal remainders broken at random."""
  shares = class_counts / class_counts.sum() * draws
  counts = np.floor(shares)
  missing = int(draws - counts.sum())
  remainders = shares - counts
  for remainder in np.unique(remainders)[::-1]:  # the largest remainders first
    if missing <= 0:
      break
    tied = np.flatnonzero(remainders == remainder)
    given = min(len(tied), missing)
    counts[rng.choice(tied, size=given, replace=False)] += 1
    missing -= given
  return counts.astype(int)


def split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) row indices of a split of `labels` with about `test_fraction` of each class in
  test: ceil(test_fraction * n) rows in test, the rest in train; the same `seed` gives the same
  split, the one scikit-learn's `train_test_split(..., test_size=test_fraction,
  stratify=labels, random_state=seed)` gives."""
  n = len(labels)
  test_size = math.ceil(test_fraction * n)
  train_size = n - test_size
  classes, class_of_row = np.unique(np.asarray(labels), return_inverse=True)
  class_counts = np.bincount(class_of_row)
  if test_size < len(classes) or train_size < len(classes) or class_counts.min() < 2:
    raise ValueError(f"cannot split {n} rows of {len(classes)} classes (the smallest has "
                     f"{class_counts.min()}) with {test_size} in test: every class needs a row "
                     f"on each side")
  rows_of_class = np.split(np.argsort(class_of_row, kind="mergesort"),
                           np.cumsum(class_counts)[:-1])
  rng = np.random.RandomState(seed)
  train_counts = _apportion(class_counts, train_size, rng)
  test_counts = _apportion(class_counts - train_counts, test_size, rng)
  train, test = [], []
  for rows, to_train, to_test in zip(rows_of_class, train_counts, test_counts):
    shuffled = rows[rng.permutation(len(rows))]
    train.extend(shuffled[:to_train])
    test.extend(shuffled[to_train:to_train + to_test])
  return rng.permutation(train), rng.permutation(test)
