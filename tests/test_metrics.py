"""research.evaluate against scikit-learn, scipy and seqeval on random inputs (our classification
metrics are numpy, so these are parity tests); SQuAD by hand."""
import math
import re
import string

import numpy as np
import pytest
from scipy import stats
from seqeval import metrics as seqeval_metrics
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Entities
from sklearn import metrics

from research.errors import UserError
from research.evaluate import classification, entities, squad

pytestmark = pytest.mark.filterwarnings("error")  # e.g. sklearn's zero-division warnings

SEEDS = (0, 1, 2)


def _noisy(rng, labels, num_classes, flip=0.4):
  """Predictions that agree with `labels` except for a random fraction."""
  flips = rng.random(len(labels)) < flip
  return np.where(flips, rng.integers(0, num_classes, len(labels)), labels)


# --- classification, multi-label, regression, GLUE ------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", (3, 5))
def test_classification_metrics_equal_sklearn(seed, num_classes):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, 200)
  predictions = _noisy(rng, labels, num_classes)
  predictions[predictions == num_classes - 1] = 0  # one class never predicted: zero division
  names = [f"c{i}" for i in range(num_classes + 1)]  # and one class absent from both
  got = classification.classification_metrics(labels, predictions, label_names=names)
  assert "roc_auc" not in got
  assert got["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions))
  assert got["mcc"] == pytest.approx(metrics.matthews_corrcoef(labels, predictions))
  for average in ("micro", "macro", "weighted"):
    p, r, f, _ = metrics.precision_recall_fscore_support(
        labels, predictions, labels=range(num_classes + 1), average=average, zero_division=0)
    assert (got[f"precision_{average}"], got[f"recall_{average}"], got[f"f1_{average}"]) == (
        pytest.approx(p), pytest.approx(r), pytest.approx(f))
  assert all(type(v) is float for v in got.values())
  # Without label_names only the classes seen count: the macro average changes.
  seen = classification.classification_metrics(labels, predictions)
  assert seen["f1_macro"] == pytest.approx(metrics.f1_score(labels, predictions, average="macro",
                                                            zero_division=0))
  assert seen["f1_macro"] > got["f1_macro"]


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_roc_auc_equals_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 200)
  positive = np.clip(0.3 * labels + rng.random(200) * 0.7, 0, 1)
  probabilities = np.stack([1 - positive, positive], axis=1)
  got = classification.classification_metrics(labels, positive > 0.5, probabilities)
  assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, positive))
  assert got["f1_macro"] == pytest.approx(metrics.f1_score(labels, positive > 0.5,
                                                           average="macro"))
  # A single class in the labels: ROC AUC is undefined and left out, without a warning.
  assert "roc_auc" not in classification.classification_metrics(
      np.ones(200, int), positive > 0.5, probabilities)


@pytest.mark.parametrize("seed", SEEDS)
def test_tied_scores_rank_as_sklearn_and_scipy_rank_them(seed):
  """Ties are common in what we rank (rounded probabilities, STS-B's 0.2-step labels): each
  tied value takes the mean of its ranks, and a tied positive/negative pair counts one half."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 300)
  scores = np.round(0.7 * rng.random(300) + 0.3 * labels, 1)  # 11 distinct values
  assert classification.roc_auc(labels, scores) == pytest.approx(
      metrics.roc_auc_score(labels, scores))
  y = np.round(rng.uniform(0, 5, 300) * 5) / 5
  p = np.round(y + rng.normal(size=300))
  np.testing.assert_array_equal(classification.average_ranks(p), stats.rankdata(p))
  assert classification.regression_metrics(y, p)["spearman"] == pytest.approx(
      stats.spearmanr(y, p)[0])


def test_matthews_correlation_of_one_predicted_class_is_zero_as_in_sklearn():
  labels = np.array([0, 1, 2, 1, 0, 2])
  for predictions in (np.zeros(6, int), np.full(6, 7)):  # 7: a class the labels never hold
    assert classification.matthews_corrcoef(labels, predictions) == metrics.matthews_corrcoef(
        labels, predictions) == 0.0
  assert classification.matthews_corrcoef(labels, [2, 1, 2, 0, 0, 2]) == pytest.approx(
      metrics.matthews_corrcoef(labels, [2, 1, 2, 0, 0, 2]))


def test_probabilities_of_the_wrong_shape_are_refused():
  with pytest.raises(ValueError, match=r"probabilities must have shape \(4, 2\).*\(4, 3\)"):
    classification.classification_metrics([0, 1, 0, 1], [0, 1, 1, 1], np.zeros((4, 3)))


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_report_equals_sklearn(seed):
  rng = np.random.default_rng(seed)
  names = ["negative", "neutral", "positive", "never"]
  labels = rng.integers(0, 3, 200)
  predictions = _noisy(rng, labels, 3)
  report = classification.per_class_report(labels, predictions, names)
  p, r, f, support = metrics.precision_recall_fscore_support(
      labels, predictions, labels=range(4), zero_division=0)
  assert list(report) == names
  for i, name in enumerate(names):
    assert report[name] == {"precision": pytest.approx(p[i]), "recall": pytest.approx(r[i]),
                            "f1": pytest.approx(f[i]), "support": support[i]}
  lines = classification.format_report(report).splitlines()
  assert len(lines) == 1 + len(names)
  assert len({len(line) for line in lines}) == 1  # aligned columns
  assert lines[1].split() == ["negative", f"{p[0]:.4f}", f"{r[0]:.4f}", f"{f[0]:.4f}",
                              str(support[0])]


def test_confusion_matrix_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 200)
  predictions = _noisy(rng, labels, 3)
  path = tmp_path / "plots" / "confusion.png"
  matrix = classification.confusion_matrix_png(labels, predictions, ["a", "b", "c"], str(path))
  assert matrix == metrics.confusion_matrix(labels, predictions).tolist()
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_metrics_equal_sklearn(seed):
  rng = np.random.default_rng(seed)
  y = (rng.random((200, 4)) < 0.3).astype(int)
  p = np.where(rng.random((200, 4)) < 0.2, 1 - y, y)
  p[:, 3] = 0  # a label never predicted
  got = classification.multilabel_metrics(y, p)
  assert got == {
      "f1_micro": pytest.approx(metrics.f1_score(y, p, average="micro", zero_division=0)),
      "f1_macro": pytest.approx(metrics.f1_score(y, p, average="macro", zero_division=0)),
      "exact_match": pytest.approx(metrics.accuracy_score(y, p)),
      "hamming_loss": pytest.approx(metrics.hamming_loss(y, p))}


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_equal_scipy(seed):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=200)
  p = (y + rng.normal(size=200)).reshape(200, 1)  # a regression head's (n, 1) output
  got = classification.regression_metrics(y, p)
  assert got == {"pearson": pytest.approx(stats.pearsonr(y, p[:, 0])[0]),
                 "spearman": pytest.approx(stats.spearmanr(y, p[:, 0])[0]),
                 "mse": pytest.approx(np.mean((y - p[:, 0]) ** 2)),
                 "mae": pytest.approx(np.mean(np.abs(y - p[:, 0])))}


def test_regression_metrics_of_constant_inputs_are_finite():
  y = np.linspace(0, 5, 50)
  for labels, predictions in ((y, np.full(50, 2.5)), (np.full(50, 1.0), y)):
    got = classification.regression_metrics(labels, predictions)
    assert got["pearson"] == got["spearman"] == 0.0
    assert got["mse"] == pytest.approx(np.mean((labels - predictions) ** 2))
    assert not any(math.isnan(v) for v in got.values())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", sorted(classification.GLUE_METRICS))
def test_glue_metrics_are_the_official_ones(task, seed):
  rng = np.random.default_rng(seed)
  if task == "stsb":
    labels = rng.uniform(0, 5, 200)
    predictions = labels + rng.normal(size=200)
  else:
    num_classes = 3 if task == "mnli" else 2
    labels = rng.integers(0, num_classes, 200)
    predictions = _noisy(rng, labels, num_classes)
  expected = {
      "mcc": lambda: metrics.matthews_corrcoef(labels, predictions),
      "accuracy": lambda: metrics.accuracy_score(labels, predictions),
      "f1": lambda: metrics.f1_score(labels, predictions),
      "pearson": lambda: stats.pearsonr(labels, predictions)[0],
      "spearman": lambda: stats.spearmanr(labels, predictions)[0],
  }
  official = classification.GLUE_METRICS[task]
  want = {name: expected[name]() for name in official}
  got = classification.glue_metrics(task, labels, predictions)
  assert got == {**{k: pytest.approx(v) for k, v in want.items()},
                 "score": pytest.approx(np.mean(list(want.values())))}
  assert {"cola": ("mcc",), "mrpc": ("accuracy", "f1"), "qqp": ("accuracy", "f1"),
          "stsb": ("pearson", "spearman")}.get(task, ("accuracy",)) == official


def test_glue_unknown_task_is_refused():
  with pytest.raises(UserError, match=r"unknown GLUE task 'sst-2'; expected one of \['cola'"):
    classification.glue_metrics("sst-2", [0, 1], [0, 1])


# --- entities --------------------------------------------------------------------------------

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _random_tag_sequences(seed, n=60):
  """Pairs of (true, predicted) sentences, ill-formed ones included (I- after O, type changes)."""
  rng = np.random.default_rng(seed)
  true, pred = [], []
  for _ in range(n):
    length = int(rng.integers(1, 15))
    weights = np.array([6, 2, 2, 1, 1, 1, 1], float)
    sentence = list(rng.choice(TAGS, length, p=weights / weights.sum()))
    noise = rng.random(length) < 0.25
    true.append(sentence)
    pred.append([str(rng.choice(TAGS)) if flip else t for t, flip in zip(sentence, noise)])
  return true, pred


def _seqeval_entities(tags, mode):
  if mode == "strict":
    return [(e.tag, e.start, e.end) for e in Entities([tags], IOB2).entities[0]]
  return [(kind, start, end + 1) for kind, start, end in get_entities(tags)]


@pytest.mark.parametrize("mode", entities.MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_extract_entities_agrees_with_seqeval(mode, seed):
  true, pred = _random_tag_sequences(seed)
  for tags in true + pred:
    assert entities.extract_entities(tags, mode) == _seqeval_entities(tags, mode), tags


def test_extract_entities_of_ill_formed_sequences():
  tags = ["I-PER", "I-PER", "O", "B-LOC", "I-PER", "I-PER", "B-PER", "I-PER"]
  assert entities.extract_entities(tags, "conlleval") == [
      ("PER", 0, 2), ("LOC", 3, 4), ("PER", 4, 6), ("PER", 6, 8)]
  assert entities.extract_entities(tags, "strict") == [("LOC", 3, 4), ("PER", 6, 8)]


@pytest.mark.parametrize("mode", entities.MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_entity_metrics_equal_seqeval(mode, seed):
  true, pred = _random_tag_sequences(seed)
  kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
  report = seqeval_metrics.classification_report(true, pred, output_dict=True, zero_division=0,
                                                 **kwargs)
  got = entities.entity_metrics(true, pred, mode)
  micro = report.pop("micro avg")
  assert (got["precision"], got["recall"], got["f1"]) == (
      pytest.approx(micro["precision"]), pytest.approx(micro["recall"]),
      pytest.approx(micro["f1-score"]))
  assert got["f1"] == pytest.approx(seqeval_metrics.f1_score(true, pred, **kwargs))
  assert got["accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(true, pred))
  types = [k for k in report if not k.endswith(" avg")]
  assert types and {k.split("/")[0] for k in got if "/" in k} == set(types)
  for kind in types:
    assert got[f"{kind}/precision"] == pytest.approx(report[kind]["precision"])
    assert got[f"{kind}/recall"] == pytest.approx(report[kind]["recall"])
    assert got[f"{kind}/f1"] == pytest.approx(report[kind]["f1-score"])
    assert got[f"{kind}/support"] == report[kind]["support"]


@pytest.mark.parametrize("mode", entities.MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_counts_from_extract_entities_give_seqeval_scores(mode, seed):
  true, pred = _random_tag_sequences(seed)
  spans = lambda sentences: {(i, *e) for i, tags in enumerate(sentences)
                             for e in entities.extract_entities(tags, mode)}
  true_spans, pred_spans = spans(true), spans(pred)
  got = entities.entity_metrics(true, pred, mode)
  correct = len(true_spans & pred_spans)
  assert got["precision"] == pytest.approx(correct / len(pred_spans))
  assert got["recall"] == pytest.approx(correct / len(true_spans))
  assert got["f1"] == pytest.approx(2 * correct / (len(pred_spans) + len(true_spans)))
  for kind in ("PER", "LOC", "MISC"):
    assert got[f"{kind}/support"] == sum(e[1] == kind for e in true_spans)


def test_entity_metrics_without_entities():
  got = entities.entity_metrics([["O", "O"]], [["O", "I-PER"]], "strict")  # a stray I-: no entity
  assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5}


def test_entity_bad_input_is_refused():
  with pytest.raises(UserError, match="entity mode must be one of .*got 'lenient'"):
    entities.entity_metrics([["O"]], [["O"]], mode="lenient")
  with pytest.raises(UserError, match="'S-PER' is not an IOB2 tag"):
    entities.extract_entities(["O", "S-PER"])
  with pytest.raises(UserError, match="'B-' is not an IOB2 tag"):
    entities.entity_metrics([["B-"]], [["O"]])
  with pytest.raises(ValueError, match="same sentences and lengths"):
    entities.entity_metrics([["O", "O"]], [["O"]])


# --- SQuAD -----------------------------------------------------------------------------------

def test_normalize_answer():
  assert squad.normalize_answer("  The Eiffel-Tower,  in PARIS! ") == "eiffeltower in paris"
  assert squad.normalize_answer("an apple a day; theater") == "apple day theater"


def _official_normalize(s):
  """SQuAD v1.1's evaluate-v1.1.py `normalize_answer`: lower, remove punctuation, remove the
  articles, fix the whitespace, in that order."""
  lower = s.lower()
  no_punc = "".join(ch for ch in lower if ch not in set(string.punctuation))
  no_articles = re.sub(r"\b(a|an|the)\b", " ", no_punc)
  return " ".join(no_articles.split())


@pytest.mark.parametrize("text", [
    "U.S.A.", "The U.S.A. team", "A.B.C. of it", "an.the end", "the-end", "a'n apple",
    "Mr. A. Smith, a.m.", "e.g. an example", "It's a dog's life", "THE\tAn\nA", "Théâtre a b",
])
def test_normalize_answer_is_the_official_one_in_its_order(text):
  """Punctuation goes before the articles: 'U.S.A.' is 'usa', not 'us'."""
  assert _official_normalize("U.S.A.") == "usa"  # the reference itself, worked by hand
  assert squad.normalize_answer(text) == _official_normalize(text)


@pytest.mark.parametrize("prediction, truths, em, f1", [
    ("the Eiffel Tower.", ["Eiffel tower"], 1.0, 1.0),  # article, punctuation, case
    ("Eiffel Tower", ["Eiffel Tower, Paris France"], 0.0, 2 / 3),  # p=1, r=1/2
    ("the tall Eiffel Tower", ["Eiffel Tower"], 0.0, 0.8),  # p=2/3, r=1
    ("cat cat cat", ["the cat cat"], 0.0, 0.8),  # repeated tokens count once each
    ("blue car", ["red car", "a blue car today", "Blue car!"], 1.0, 1.0),  # max over truths
    ("blue car", ["red car", "a blue car today"], 0.0, 0.8),
    ("Paris", ["London"], 0.0, 0.0),
    ("", ["London"], 0.0, 0.0),
    ("", [], 1.0, 1.0),  # v2: unanswerable, and no answer given
    ("the", [], 1.0, 1.0),  # normalizes to nothing: still no answer
    ("London", [], 0.0, 0.0),
    ("", ["The", "Paris"], 0.0, 0.0),  # a truth that normalizes to nothing is dropped (v2)
])
def test_exact_match_and_f1(prediction, truths, em, f1):
  assert squad.exact_match(prediction, truths) == em
  assert squad.f1(prediction, truths) == pytest.approx(f1)


def test_squad_metrics_v2():
  references = {"q1": ["Denver Broncos"], "q2": ["Eiffel Tower, Paris France"], "q3": [],
                "q4": [], "q5": ["1066"]}
  predictions = {"q1": "the denver broncos", "q2": "Eiffel Tower", "q3": "", "q4": "1990",
                 "extra": "ignored"}  # q5 has no prediction: it scores 0
  got = squad.squad_metrics(predictions, references)
  assert got == pytest.approx({
      "exact_match": 100 * 2 / 5, "f1": 100 * (1 + 2 / 3 + 1) / 5,
      "HasAns_exact": 100 / 3, "HasAns_f1": 100 * (1 + 2 / 3) / 3,
      "NoAns_exact": 50.0, "NoAns_f1": 50.0, "HasAns_total": 3, "NoAns_total": 2})


def test_squad_metrics_v1_has_no_split_by_answerability():
  references = {"a": ["Denver Broncos", "Broncos"], "b": ["in 1066"]}
  got = squad.squad_metrics({"a": "Broncos", "b": "1066 AD"}, references)
  assert got == pytest.approx({"exact_match": 50.0, "f1": 75.0})
