"""The synthetic corpus is what the table says: N copies of the BBC articles, one document per
article, later copies with each article's words shuffled."""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import run  # pylint: disable=g-import-not-at-top

from research.data import sources  # pylint: disable=g-import-not-at-top


def test_corpus_copies_shuffle_each_article(tmp_path):
  pattern = run.write_corpus(str(tmp_path), 2)
  cfg = type("DataConfig", (), dict(source=pattern, text_field="text", eval_fraction=0.05))
  docs = [d for _, d in sources.stream_documents(cfg)]
  articles = [" ".join(t.split()) for _, t in sources.read_bbc_news()]
  assert len(docs) == 2 * len(articles) == 4450
  assert docs[:len(articles)] == articles
  shuffled = docs[len(articles):]
  assert sum(a != b for a, b in zip(shuffled, articles)) > 2200  # new text...
  for a, b in zip(shuffled, articles):  # ...from the same words
    assert collections.Counter(a.split()) == collections.Counter(b.split())
