"""Classification labels and texts of the user's files, refused in one line when they would train
wrongly; the eval loss beside the train loss. (Through the command line:
tests/test_cli_errors.py::test_fine_tuning_labels_of_two_types_are_refused.)"""
import logging

import numpy as np
import pytest

from research.data import labelled
from research.errors import UserError
from research.tasks import classification


def rows(*labels):
  return [{"text": f"row {i}", "text_pair": None, "label": label} for i, label in enumerate(labels)]


@pytest.mark.parametrize("kind, labels, line", [
    ("classification", ("pos",) * 3,
     "task 't': the train split has one class ('pos'); classification needs at least 2"),
    ("classification", ("pos", None, "neg"), "task 't', train split: row 2 has no label (null)"),
    ("regression", (0.5, None), "task 't', train split: row 2 has no label (null)"),
    ("multilabel", ("a|b", None), "task 't', train split: row 2 has no label (null)"),
    ("classification", (1, "1", "pos"), "task 't', train split: labels mix integers and text "
                                         "(row 1: 1, row 2: '1'); write every label the same way"),
    ("classification", ("pos", 1.5), "task 't', train split: row 2's label 1.5 is neither text "
                                     "nor an integer"),
    ("classification", (True, False), "task 't', train split: row 1's label True is neither text "
                                      "nor an integer"),
    ("classification", ("pos", ["pos"]), "task 't', train split: row 2's label ['pos'] is neither "
                                         "text nor an integer"),
])
def test_labels_that_would_train_wrongly_are_refused(kind, labels, line):
  with pytest.raises(UserError) as e:
    classification.label_names(kind, rows(*labels), "t")
  assert str(e.value) == line


def test_a_null_label_in_another_split_is_refused():
  with pytest.raises(UserError, match=r"^task 't', eval split: row 1 has no label \(null\)$"):
    classification.encode_labels("classification", ["neg", "pos"], rows(None), "eval", "t")


def test_integers_that_are_not_0_to_k_are_class_names(caplog):
  """{0, 7}: two classes, not an 8-way head with six never seen; one warning line says so."""
  with caplog.at_level(logging.WARNING, logger="research"):
    names = classification.label_names("classification", rows(7, 0, 7), "t")
  assert names == ["0", "7"]
  assert [r.getMessage() for r in caplog.records] == [
      "task 't': integer labels [0, 7] are not 0..1: they are class names, ids 0..1 in that order"]
  ids = classification.encode_labels("classification", names, rows(0, 7, 7), "eval", "t")
  assert ids.tolist() == [0, 1, 1]
  assert classification.label_names("classification", rows(2, 10, 1), "t") == ["1", "2", "10"]


@pytest.mark.parametrize("value, shown", [(5, "5"), (["a", "b"], '["a", "b"]'), (None, "null")])
def test_text_that_is_not_text_is_refused(value, shown):
  """It was str()-ed: the model read '5' or "['a', 'b']", not what the file holds."""
  task_cfg = {"kind": "classification"}
  with pytest.raises(UserError) as e:
    labelled._local_row({"text": value, "label": "pos"}, task_cfg, "f.jsonl", 3)
  assert str(e.value) == f"'f.jsonl', row 3: 'text' must be text, got {shown}"
  with pytest.raises(UserError, match="'text_pair' must be text, got 7"):
    labelled._local_row({"text": "a", "text_pair": 7, "label": "pos"}, task_cfg, "f.jsonl", 3)
  assert labelled._local_row({"text": "a", "text_pair": "b", "label": "pos"}, task_cfg, "f", 1) \
      == {"text": "a", "text_pair": "b", "label": "pos"}


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_the_eval_loss_is_the_training_objective_per_row(kind):
  """eval/<task>/loss (loss.png's eval curve) is the train step's loss, on the host."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = {"classification": rng.integers(0, 3, 6).astype(np.int32),
            "multilabel": rng.integers(0, 2, (6, 3)).astype(np.float32),
            "regression": rng.normal(size=6).astype(np.float32)}[kind]
  objective = classification.OBJECTIVES[kind]("t", "h")
  batch = {"label": labels}
  expected = objective.sums({"h_logits": logits}, batch)["loss"] / objective.count(batch)
  np.testing.assert_allclose(classification.mean_loss(kind, logits, labels), expected, rtol=1e-5)
