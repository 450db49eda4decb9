"""The synthetic corpus is what the table says: N copies of the BBC articles, one document per
article, later copies with each article's words shuffled."""
import collections
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


@pytest.mark.slow
def test_the_readme_command_at_1x(tmp_path):
  """The README's measuring command as typed, at the 1x scale only: a prepare row and one row
  per path, the prepared corpus's rows equal to prepare's count."""
  proc = subprocess.run([sys.executable, "experiments/corpus_scale/run.py", f"--root={tmp_path}",
                         "--scales=1", "--in_memory_scales=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert [r["path"] for r in rows] == ["prepare", "prepared", "in-memory"], rows
  assert all(r["scale"] == 1 for r in rows)
