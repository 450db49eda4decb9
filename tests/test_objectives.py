"""Objectives against a hand computation in numpy: which positions count, and the values."""
import numpy as np
import pytest

from research import objectives


def evaluate(objective, outputs, batch):
  """(loss, {metric: (sum, count)}) of one objective on one batch, as the train step sees it."""
  loss, sums = objectives.loss_and_sums((objective,), outputs, batch,
                                        objectives.counts((objective,), batch))
  return loss, {k.split("/", 1)[1]: v for k, v in sums.items()}


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_causal_lm_never_predicts_across_documents():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 11, (2, 6)).astype(np.int32)
  segments = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  batch = {"input_ids": ids, "segment_ids": segments, "unigram_top": np.array([ids[0, 1]] * 2)}
  loss, sums = evaluate(objectives.causal_lm(), {"lm_logits": logits}, batch)
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
  loss, sums = evaluate(objectives.causal_lm(), {"lm_logits": logits},
                        {**base, "attention_mask": mask})
  ref_loss, ref_sums = evaluate(objectives.causal_lm(), {"lm_logits": logits},
                                {**base, "segment_ids": mask})
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  assert float(sums["loss"][1]) == float(ref_sums["loss"][1]) == (8 if padded else 10)


def test_masked_lm_counts_weighted_positions_only():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  labels = rng.integers(0, 7, (2, 3)).astype(np.int32)
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  batch = {"masked_ids": labels, "masked_weights": weights, "unigram_top": np.zeros(2, np.int32)}
  loss, sums = evaluate(objectives.masked_lm(), {"mlm_logits": logits}, batch)
  picked = [(0, 0), (0, 1), (1, 0)]
  expected = np.mean([-log_softmax(logits[r, p])[labels[r, p]] for r, p in picked])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(sums["loss"][1]) == 3


def test_padding_rows_of_an_evaluation_pass_count_nothing():
  """row_mask 0 (the rows that fill up the last batch of a one-pass evaluation) adds nothing."""
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
  labels = rng.integers(0, 7, (3, 4)).astype(np.int32)
  batch = {"masked_ids": labels, "masked_weights": np.ones((3, 4), np.float32),
           "unigram_top": np.zeros(3, np.int32)}
  _, first_two = evaluate(objectives.masked_lm(), {"mlm_logits": logits[:2]},
                          {k: v[:2] for k, v in batch.items()})
  _, padded = evaluate(objectives.masked_lm(), {"mlm_logits": logits},
                       {**batch, "row_mask": np.array([1, 1, 0], np.int32)})
  for key in ("loss", "accuracy", "unigram_accuracy"):
    np.testing.assert_allclose([float(x) for x in padded[key]],
                               [float(x) for x in first_two[key]], rtol=1e-6)
  assert float(padded["loss"][1]) == 8


def test_weighted_objectives_divide_each_by_its_own_count():
  """MLM + NSP: loss = mean MLM loss + weight x mean NSP loss, each over its own predictions."""
  rng = np.random.default_rng(4)
  mlm_logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  nsp_logits = rng.normal(size=(2, 2)).astype(np.float32)
  batch = {"masked_ids": rng.integers(0, 5, (2, 3)).astype(np.int32),
           "masked_weights": np.array([[1, 1, 1], [1, 0, 0]], np.float32),
           "unigram_top": np.zeros(2, np.int32), "sentence_label": np.array([0, 1], np.int32),
           "attention_mask": np.ones((2, 4), np.int32)}
  objs = objectives.pretraining(_cfg(name="mlm", sentence_task="nsp", sentence_task_weight=0.5))[0]
  outputs = {"mlm_logits": mlm_logits, "sentence_pair_logits": nsp_logits}
  loss, sums = objectives.loss_and_sums(objs, outputs, batch, objectives.counts(objs, batch))
  mlm = np.mean([-log_softmax(mlm_logits[r, p])[batch["masked_ids"][r, p]]
                 for r, p in [(0, 0), (0, 1), (0, 2), (1, 0)]])
  nsp = np.mean([-log_softmax(nsp_logits[r])[batch["sentence_label"][r]] for r in range(2)])
  np.testing.assert_allclose(float(loss), mlm + 0.5 * nsp, rtol=1e-5)
  assert float(sums["nsp/loss"][1]) == 2 and float(sums["mlm/loss"][1]) == 4


def test_span_loss_is_the_mean_of_start_and_end_cross_entropies_over_real_tokens():
  """Multi-token answers (end > start), padded keys and a padding row (row_mask 0)."""
  rng = np.random.default_rng(5)
  start_logits, end_logits = rng.normal(size=(2, 3, 6)).astype(np.float32)
  mask = np.array([[1] * 6, [1] * 6, [1] * 4 + [0] * 2], np.int32)
  batch = {"attention_mask": mask, "start_positions": np.array([1, 0, 2], np.int32),
           "end_positions": np.array([4, 2, 3], np.int32), "row_mask": np.array([1, 0, 1])}
  loss, sums = evaluate(objectives.span("qa", "qa"), {"qa_start_logits": start_logits,
                                                      "qa_end_logits": end_logits}, batch)
  def nll(logits, row, label):
    real = logits[row, :mask[row].sum()]  # padded positions are never an answer
    return -log_softmax(real)[label]
  expected = [(nll(start_logits, r, batch["start_positions"][r]) +
               nll(end_logits, r, batch["end_positions"][r])) / 2 for r in (0, 2)]
  assert float(sums["loss"][1]) == 2
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)


def _cfg(**kw):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(kw)
