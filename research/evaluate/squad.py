"""SQuAD exact match and F1, following the official v1.1 and v2.0 evaluation scripts.

Answers are compared after `normalize_answer`; a question's score is the best over its ground
truths. SQuAD v2.0 adds unanswerable questions (no ground truth): only an empty prediction is
right for them. A ground truth that normalizes to nothing (e.g. 'the') is dropped, as v2.0's
script does.
"""
import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """Lower-cases, then removes punctuation, the articles a/an/the and extra whitespace."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", s).split())


def _ground_truths(truths) -> list:
  """The answerable truths, or [''] (the one right answer) for an unanswerable question."""
  return [t for t in truths if normalize_answer(t)] or [""]


def _f1(prediction: str, truth: str) -> float:
  pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
  if not pred_tokens or not truth_tokens:  # a no-answer on either side: right only if both are
    return float(pred_tokens == truth_tokens)
  same = sum((collections.Counter(pred_tokens) & collections.Counter(truth_tokens)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(truth_tokens)
  return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truths) -> float:
  """1.0 if the normalized prediction equals a normalized ground truth, else 0.0."""
  return float(max(normalize_answer(prediction) == normalize_answer(t)
                   for t in _ground_truths(truths)))


def f1(prediction: str, truths) -> float:
  """The best token-level F1 (bag of normalized words) of the prediction against a truth."""
  return max(_f1(prediction, t) for t in _ground_truths(truths))


def squad_metrics(predictions: dict, references: dict) -> dict:
  """'exact_match' and 'f1' in percent (0-100) over the questions of `references`.

  `predictions` maps a question id to the predicted text ('' for no answer); `references` maps
  it to its ground-truth texts ([] if unanswerable). A question without a prediction scores 0
  (v1.1's rule; v2.0's script leaves it out of the average instead). When some question is
  unanswerable, the same scores are also given for the answerable ('HasAns_') and unanswerable
  ('NoAns_') ones, with their counts ('HasAns_total', 'NoAns_total'), as v2.0's script does.
  """
  scores = {qid: (exact_match(predictions[qid], truths), f1(predictions[qid], truths))
            if qid in predictions else (0.0, 0.0) for qid, truths in references.items()}

  def percent(qids, prefix=""):
    n = max(len(qids), 1)
    return {f"{prefix}exact": 100.0 * sum(scores[q][0] for q in qids) / n,
            f"{prefix}f1": 100.0 * sum(scores[q][1] for q in qids) / n}

  overall = percent(list(references))
  result = {"exact_match": overall["exact"], "f1": overall["f1"]}
  has_answer = [q for q, truths in references.items() if truths]
  no_answer = [q for q, truths in references.items() if not truths]
  if no_answer:
    result.update(percent(has_answer, "HasAns_"))
    result.update(percent(no_answer, "NoAns_"))
    result.update(HasAns_total=len(has_answer), NoAns_total=len(no_answer))
  return result
