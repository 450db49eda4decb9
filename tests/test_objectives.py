"""Objectives against a hand computation in numpy: which positions count, and the values."""
import numpy as np
import pytest

from research import objectives


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_causal_lm_never_predicts_across_documents():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 11, (2, 6)).astype(np.int32)
  segments = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  batch = {"input_ids": ids, "segment_ids": segments, "unigram_top": np.array([ids[0, 1]] * 2)}
  loss, sums = objectives.causal_lm_loss({"lm_logits": logits}, batch)
  # Predicted (row, t -> t+1): row 0: 0->1, 1->2, 3->4 (2->3 crosses documents, 4->5 is padding);
  # row 1: all five.
  pairs = [(0, 0), (0, 1), (0, 3)] + [(1, t) for t in range(5)]
  expected = [-log_softmax(logits[r, t])[ids[r, t + 1]] for r, t in pairs]
  assert float(sums["loss"][1]) == len(pairs)
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
  hits = sum(logits[r, t].argmax() == ids[r, t + 1] for r, t in pairs)
  assert float(sums["accuracy"][0]) == hits
  assert float(sums["unigram_accuracy"][0]) == sum(ids[r, t + 1] == ids[0, 1] for r, t in pairs)


@pytest.mark.parametrize("padded", [False, True])
def test_causal_lm_without_segments_is_one_document_per_row(padded):
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 11, (2, 6)).astype(np.int32)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  mask = np.array([[1] * 6, [1] * 4 + [0] * 2] if padded else [[1] * 6] * 2, np.int32)
  base = {"input_ids": ids, "unigram_top": np.zeros(2, np.int32)}
  loss, sums = objectives.causal_lm_loss({"lm_logits": logits}, {**base, "attention_mask": mask})
  ref_loss, ref_sums = objectives.causal_lm_loss({"lm_logits": logits},
                                                 {**base, "segment_ids": mask})
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  assert float(sums["loss"][1]) == float(ref_sums["loss"][1]) == (8 if padded else 10)


def test_masked_lm_counts_weighted_positions_only():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  labels = rng.integers(0, 7, (2, 3)).astype(np.int32)
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  batch = {"masked_ids": labels, "masked_weights": weights, "unigram_top": np.zeros(2, np.int32)}
  loss, sums = objectives.masked_lm_loss({"mlm_logits": logits}, batch)
  picked = [(0, 0), (0, 1), (1, 0)]
  expected = np.mean([-log_softmax(logits[r, p])[labels[r, p]] for r, p in picked])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(sums["loss"][1]) == 3
