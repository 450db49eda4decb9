"""Data: sources, tokenizers, MLM masking, packing, and the step-indexed per-host pipeline."""
import json
import os

import numpy as np
import pytest

from research import data as data_lib
from research.data import masking, packing, sources, tokenizer as tokenizer_lib
from research.data.pipeline import StepIndexedBatches
from research.errors import UserError


def test_bbc_news_corpus_is_read_from_package_files():
  articles = sources.read_bbc_news()
  assert len(articles) == 2225
  assert {topic for topic, _ in articles} == set(sources.BBC_TOPICS)
  assert all(len(text) > 100 for _, text in articles)


def test_holdout_split_is_stable_and_disjoint():
  docs = [f"document number {i}" for i in range(1000)]
  a, b = sources.holdout_split(docs, 0.1), sources.holdout_split(list(docs), 0.1)
  assert a == b
  assert set(a["train"]).isdisjoint(a["eval"])
  assert 50 < len(a["eval"]) < 150


@pytest.mark.parametrize("ext", ["txt", "jsonl", "csv"])
def test_local_files(tmp_path, ext):
  texts = [f"local doc {i} with some words" for i in range(40)]
  path = tmp_path / f"corpus.{ext}"
  if ext == "txt":
    path.write_text("\n\n".join(texts))
  elif ext == "jsonl":
    path.write_text("\n".join(json.dumps({"body": t}) for t in texts))
  else:
    path.write_text("body\n" + "\n".join(texts))
  cfg = _data_cfg(source=str(path), text_field="body", eval_fraction=0.2)
  docs = sources.load_documents(cfg)
  assert sorted(docs["train"] + docs["eval"]) == sorted(texts)


def test_missing_and_empty_sources(tmp_path):
  with pytest.raises(UserError, match="no file matches"):
    sources.load_documents(_data_cfg(source=str(tmp_path / "nope.txt")))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n  \n")
  with pytest.raises(UserError, match="no non-empty documents"):
    sources.load_documents(_data_cfg(source=str(empty)))
  bad_column = tmp_path / "rows.jsonl"
  bad_column.write_text('{"body": "x"}\n')
  with pytest.raises(UserError, match="not a column"):
    sources.load_documents(_data_cfg(source=str(bad_column), text_field="text"))


def test_hub_unreachable_is_one_line(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(UserError, match="could not load dataset"):
    sources.load_documents(_data_cfg(source="hf:surely_not_a_dataset_name_42"))


def test_tfds_dataset_not_prepared_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(UserError, match="could not open TFDS dataset"):
    sources.load_documents(_data_cfg(source="tfds:surely_not_a_dataset_42"))


def test_trained_tokenizers_round_trip(tmp_path):
  texts = [t for _, t in sources.read_bbc_news()[:200]]
  wp = tokenizer_lib.train_wordpiece(texts, 1000)
  ids = wp.encode("The Prime Minister said", add_special_tokens=False).ids
  assert wp.decode(ids) == "the prime minister said"
  bpe = tokenizer_lib.train_byte_bpe(texts, 1000)
  s = "Café prices rose 5%\n  twice"
  assert bpe.decode(bpe.encode(s).ids) == s
  tokenizer_lib.save(wp, str(tmp_path))
  loaded = tokenizer_lib.load(str(tmp_path / "tokenizer.json"))
  assert loaded.encode("prime minister").ids == wp.encode("prime minister").ids
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(sorted(wp.get_vocab(), key=wp.get_vocab().get)))
  from_vocab = tokenizer_lib.load(str(vocab))
  assert (from_vocab.encode("Prime minister!", add_special_tokens=False).ids ==
          wp.encode("Prime minister!").ids)


def test_masking_follows_the_bert_recipe():
  rng = np.random.default_rng(0)
  length, mask_id, first, vocab = 128, 4, 5, 1000
  ids = np.arange(length, dtype=np.int32) + 100
  maskable = np.ones(length, bool)
  maskable[[0, 127]] = False
  kinds = np.zeros(3)
  for _ in range(400):
    out = masking.mask_tokens(ids, maskable, rng, rate=0.15, max_predictions=20, mask_id=mask_id,
                              regular_ids=np.arange(first, vocab))
    n = int(out["masked_weights"].sum())
    assert n == 19  # round(126 * 0.15)
    pos = out["masked_positions"][:n]
    assert not set(pos) & {0, 127}
    np.testing.assert_array_equal(out["masked_ids"][:n], ids[pos])
    unchanged = np.ones(length, bool)
    unchanged[pos] = False
    np.testing.assert_array_equal(out["input_ids"][unchanged], ids[unchanged])
    new = out["input_ids"][pos]
    kinds += [(new == mask_id).sum(), ((new != mask_id) & (new != ids[pos])).sum(),
              (new == ids[pos]).sum()]
  fractions = kinds / kinds.sum()
  np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.02)


def test_pack_documents_keeps_boundaries():
  docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9])]
  out = packing.pack_documents(docs, 5, eos=0)
  np.testing.assert_array_equal(out["input_ids"], [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8], [9, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 2], [1, 1, 2, 2, 2], [1, 1, 0, 0, 0]])


def test_batches_are_a_function_of_step_and_split_across_hosts(tiny, tmp_path):
  config = tiny("mlm")
  one = data_lib.build(config, str(tmp_path))
  again = data_lib.build(config, str(tmp_path))
  for step in (0, 3, 700):  # 700 steps is past an epoch of the test's split
    a, b = one.train.host_batch(step), again.train.host_batch(step)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(one.train.host_batch(1)["input_ids"], one.train.host_batch(2)["input_ids"])
  halves = [StepIndexedBatches(one.train.examples, 16, process_index=p, process_count=2,
                               extra=one.train.extra).host_batch(5) for p in range(2)]
  full = one.train.host_batch(5)
  for k in full:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), full[k])


def test_sentence_tasks_build_pairs(tiny, tmp_path):
  for task in ("nsp", "sop"):
    config = tiny("mlm")
    config.objective.sentence_task = task
    batch = data_lib.build(config, str(tmp_path)).train.host_batch(0)
    assert set(np.unique(batch["sentence_label"])) == {0, 1}
    sep = data_lib.build(config, str(tmp_path)).tokenizer.token_to_id("[SEP]")
    assert ((batch["input_ids"] == sep).sum(1) == 2).all()
    assert (batch["token_type_ids"].max(1) == 1).all()


def _data_cfg(**kw):
  import ml_collections  # pylint: disable=g-import-not-at-top
  base = dict(source="bbc_news", text_field="text", eval_fraction=0.05, seq_len=64, tokenizer="",
              vocab_size=1000)
  base.update(kw)
  return ml_collections.ConfigDict(base)
