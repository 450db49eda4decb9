"""Scores of generated text against one reference each: exact match, token F1, ROUGE-L.

exact_match and f1 are SQuAD's (`research.evaluate.squad`: lower-cased, punctuation and the
articles a/an/the removed, whitespace collapsed; F1 over the bag of the remaining words).
rouge_l is the ROUGE-L F-measure of the `rouge-score` package (its default tokenizer: lower-cased,
runs of letters and digits; no stemming): the longest common subsequence of the two token
sequences, LCS / len(generated) as precision, LCS / len(reference) as recall. Each is averaged
over the examples and given in percent (0-100), like SQuAD's.
"""
import functools

from research.evaluate import squad


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
  """Built at first use: building it logs a line, which importing this module must not."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(generated: str, reference: str) -> float:
  return _rouge_scorer().score(reference, generated)["rougeL"].fmeasure


def generation_metrics(generated: list[str], references: list[str]) -> dict:
  """{'exact_match', 'f1', 'rouge_l'} in percent, averaged over the pairs."""
  n = max(len(references), 1)
  scores = [(squad.exact_match(g, [r]), squad.f1(g, [r]), rouge_l(g, r))
            for g, r in zip(generated, references)]
  return {name: 100.0 * sum(s[i] for s in scores) / n
          for i, name in enumerate(("exact_match", "f1", "rouge_l"))}
