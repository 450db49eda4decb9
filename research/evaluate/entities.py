"""Entity-level precision, recall and F1 of IOB2 tag sequences (NER), as seqeval computes them.

Two ways to read ill-formed sequences (an 'I-' after 'O', or after another type):
- 'conlleval' (seqeval's default, compatible with the CoNLL-2000 `conlleval` script) is lenient:
  such an 'I-' starts a new entity.
- 'strict' (seqeval's mode='strict' with the IOB2 scheme): an entity is a 'B-X' followed by
  'I-X's only; a stray 'I-' belongs to no entity.
"""
from research.errors import UserError

MODES = ("conlleval", "strict")


def _check(tag_sequences, mode):
  if mode not in MODES:
    raise UserError(f"entity mode must be one of {MODES}, got {mode!r}")
  for tags in tag_sequences:
    for tag in tags:
      if tag != "O" and (tag[:2] not in ("B-", "I-") or len(tag) < 3):
        raise UserError(f"{tag!r} is not an IOB2 tag: expected 'O', 'B-<type>' or 'I-<type>'")


def extract_entities(tags, mode="conlleval") -> list:
  """The entities of one tag sequence, as (type, start_word, end_word_exclusive) in order."""
  _check([tags], mode)
  entities, start, kind = [], None, None
  for i, tag in enumerate(list(tags) + ["O"]):
    prefix, _, name = tag.partition("-")
    if start is not None and not (prefix == "I" and name == kind):
      entities.append((kind, start, i))
      start = None
    if start is None and (prefix == "B" or (prefix == "I" and mode == "conlleval")):
      start, kind = i, name
  return entities


def _entity_types(tag_sequences, mode) -> set:
  """The types seqeval reports: those of the entities it finds (in `mode`)."""
  # seqeval is imported where it is used: it brings scikit-learn and pandas, about a second of
  # every command's start-up (see research/evaluate/classification.py `metrics`).
  from seqeval.metrics import sequence_labeling  # pylint: disable=g-import-not-at-top
  from seqeval.scheme import IOB2, Entities  # pylint: disable=g-import-not-at-top
  if mode == "strict":
    return Entities(tag_sequences, IOB2).unique_tags
  return {kind for kind, _, _ in sequence_labeling.get_entities(tag_sequences)}


def entity_metrics(true_tags, pred_tags, mode="conlleval") -> dict:
  """Micro-averaged entity 'precision', 'recall', 'f1'; '<TYPE>/precision' etc. per type; and
  token-level 'accuracy'. An entity counts as found only if its type and span match exactly.

  `true_tags` and `pred_tags` are lists of sentences, each a list of tags such as 'B-PER'.
  Types seen in neither the truth nor the predictions are absent; scores with a zero
  denominator are 0.
  """
  _check(true_tags, mode)
  _check(pred_tags, mode)
  if [len(t) for t in true_tags] != [len(p) for p in pred_tags]:
    raise ValueError("true_tags and pred_tags must have the same sentences and lengths")
  true_tags, pred_tags = [list(t) for t in true_tags], [list(p) for p in pred_tags]
  # pylint: disable=g-import-not-at-top
  from seqeval import metrics as seqeval_metrics
  from seqeval.metrics import sequence_labeling, v1
  from seqeval.scheme import IOB2
  # pylint: enable=g-import-not-at-top
  if mode == "strict":
    scores = lambda average: v1.precision_recall_fscore_support(
        true_tags, pred_tags, average=average, zero_division=0, scheme=IOB2)
  else:
    scores = lambda average: sequence_labeling.precision_recall_fscore_support(
        true_tags, pred_tags, average=average, zero_division=0)
  p, r, f, _ = scores("micro")
  result = {"precision": float(p), "recall": float(r), "f1": float(f),
            "accuracy": float(seqeval_metrics.accuracy_score(true_tags, pred_tags))}
  kinds = sorted(_entity_types(true_tags, mode) | _entity_types(pred_tags, mode))
  for kind, p, r, f, support in zip(kinds, *scores(None)):
    result.update({f"{kind}/precision": float(p), f"{kind}/recall": float(r),
                   f"{kind}/f1": float(f), f"{kind}/support": int(support)})
  return result
