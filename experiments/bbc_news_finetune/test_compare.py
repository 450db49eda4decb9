"""The baseline of the comparison runs and is a real classifier on the real split."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import compare  # pylint: disable=g-import-not-at-top


def test_tfidf_baseline_on_the_bbc_split():
  result = compare.tfidf_baseline()
  assert set(result) == {"eval/accuracy", "eval/f1_macro", "test/accuracy", "test/f1_macro"}
  assert result["test/accuracy"] > 0.8  # five balanced-ish topics: chance is ~0.23
