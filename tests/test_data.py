"""Data: sources, tokenizers, MLM masking, packing, and the step-indexed per-host pipeline."""
import collections
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from conftest import REPO
from research import data as data_lib
from research.data import bpe, keyed_random, masking, packing, sources, tokenizer as tokenizer_lib
from research.data import examples as examples_lib
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


def test_non_utf8_text_is_read_counted_and_named(tmp_path, caplog):
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("\n\n".join(f"caf\xe9 number {i} costs \xa3{i}" for i in range(40))
                     .encode("latin-1"))
  stats = {}
  with caplog.at_level("WARNING", logger="research.data.sources"):
    docs = sources.load_documents(_data_cfg(source=str(latin1), eval_fraction=0.5), stats)
  assert stats == {"data/undecodable_bytes": 80}
  assert "caf\ufffd number 0 costs \ufffd0" in docs["train"] + docs["eval"]
  assert "80 bytes" in caplog.text and str(latin1) in caplog.text
  utf8 = tmp_path / "utf8.txt"
  utf8.write_text("\n\n".join(f"caf\xe9 {i}" for i in range(40)), encoding="utf-8")
  stats = {}
  sources.load_documents(_data_cfg(source=str(utf8), eval_fraction=0.5), stats)
  assert stats == {"data/undecodable_bytes": 0}


@pytest.mark.slow
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


# Trains both tokenizers on (1) 26 words 'xa' ... 'xz', whose pairs (x, ##a) ... (x, ##z) all
# occur once: the 13 merges that fit are decided by tie-breaking alone; (2) every 8th BBC article.
_TRAIN_BOTH = """
import json, sys
from research.data import sources, tokenizer
ties = [" ".join("x" + c for c in "abcdefghijklmnopqrstuvwxyz")]
bbc = [text for _, text in sources.read_bbc_news()[::8]]
out = {}
for name, texts, wp_size, bpe_size in (("ties", ties, 57 + 13, 258 + 13), ("bbc", bbc, 2000, 2000)):
  out["wordpiece/" + name] = tokenizer.train_wordpiece(texts, wp_size).to_str()
  out["byte_bpe/" + name] = tokenizer.train_byte_bpe(texts, bpe_size).to_str()
json.dump(out, sys.stdout)
"""


def test_trained_tokenizers_are_the_same_in_every_process():
  procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_BOTH], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONHASHSEED=str(seed)))
           for seed in (1, 2)]
  outputs = [proc.communicate(timeout=300) for proc in procs]
  assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
  first, second = (json.loads(out) for out, _ in outputs)
  assert first.keys() == second.keys()
  for key in first:
    assert first[key] == second[key], f"{key} differs between two processes"
  # Ties go to the pair of lower ids: (x, ##a) ... (x, ##m). Byte-level: (Ġ, x) x25 first, then
  # (x, a) before (Ġx, b) ... (Ġx, m), as x is older than Ġx.
  vocab = json.loads(first["wordpiece/ties"])["model"]["vocab"]
  assert sorted(t for t in vocab if len(t) == 2) == ["x" + c for c in "abcdefghijklm"]
  vocab = json.loads(first["byte_bpe/ties"])["model"]["vocab"]
  assert "xa" in vocab
  assert sorted(t for t in vocab if len(t) == 3) == ["Ġx" + c for c in "bcdefghijklm"]


def test_training_finds_what_the_tokenizers_trainers_find():
  """Same algorithm as `tokenizers` (when its ids are in sorted order), so the same files."""
  texts = [text for _, text in sources.read_bbc_news()[::8]]
  hf = tokenizers.Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=2000, special_tokens=[tokenizer_lib.GPT_EOS], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  assert tokenizer_lib.train_byte_bpe(texts, 2000).to_str() == hf.to_str()

  hf = tokenizer_lib.bert_wordpiece({})
  words = bpe.bert_word_counts(texts, hf.normalizer, hf.pre_tokenizer)
  chars = sorted({c for w in words for c in w})
  inner = ["##" + c for c in sorted({c for w in words for c in w[1:]})]
  # Declared up front, the (word-inner) characters get sorted ids instead of hash-map order ones.
  hf.train_from_iterator(texts, trainers.WordPieceTrainer(
      vocab_size=2000, special_tokens=[*tokenizer_lib.BERT_SPECIALS, *chars, *inner],
      show_progress=False))
  assert set(tokenizer_lib.train_wordpiece(texts, 2000).get_vocab()) == set(hf.get_vocab())


def test_word_counts_split_as_the_pre_tokenizers_do():
  texts = [text for _, text in sources.read_bbc_news()[::20]]
  texts += ["Don't  stop:\t3.5%  of  naïve   CAFÉS’ 東京 emoji🙂 it's\n\n  end  ", "", "x"]
  bert = tokenizer_lib.bert_wordpiece({})
  normalized = [bert.normalizer.normalize_str(t) for t in texts]
  expected = collections.Counter(
      w for t in normalized for w, _ in bert.pre_tokenizer.pre_tokenize_str(t))
  assert bpe.bert_word_counts(texts, bert.normalizer, bert.pre_tokenizer) == expected
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
  expected = collections.Counter(w for t in texts for w, _ in byte_level.pre_tokenize_str(t))
  assert bpe.byte_level_word_counts(texts) == expected


def test_bpe_merges_the_most_frequent_pair_everywhere_at_once():
  # 'aaa' x2 holds (a, a) twice: 4; merged, it leaves (aa, a) x2, then (a, b) x1.
  vocab, merges = bpe.learn({"aaa": 2, "ab": 1}, ["a", "b"], 10, ["<s>"])
  assert vocab == {"<s>": 0, "a": 1, "b": 2, "aa": 3, "aaa": 4, "ab": 5}
  assert merges == [("a", "a"), ("aa", "a"), ("a", "b")]
  vocab, _ = bpe.learn({"abc": 2, "xbc": 2}, ["a", "b", "c", "x", "##b", "##c"], 9, prefix="##")
  assert list(vocab)[6:] == ["##bc", "abc", "xbc"]  # abc and xbc tie: a has the lower id


def test_masking_follows_the_bert_recipe():
  batch, length, mask_id, first, vocab = 400, 128, 4, 5, 1000
  ids = np.tile(np.arange(length, dtype=np.int32) + 100, (batch, 1))
  maskable = np.ones((batch, length), bool)
  maskable[:, [0, 127]] = False
  maskable[1, 50:] = False  # 48 candidates: round(7.2) = 7 predictions
  maskable[2] = False  # nothing to mask
  out = masking.mask_tokens(ids, maskable, 0, np.arange(batch), rate=0.15, max_predictions=20,
                            mask_id=mask_id, regular_ids=np.arange(first, vocab))
  n = out["masked_weights"].sum(1).astype(int)
  assert n[1] == 7 and n[2] == 0 and (n[3:] == 19).all()  # round(126 * 0.15)
  assert not out["masked_positions"][2].any() and (out["input_ids"][2] == ids[2]).all()
  kinds, hits = np.zeros(3), np.zeros(length)
  for row in [0] + list(range(3, batch)):
    pos = out["masked_positions"][row, :n[row]]
    assert (np.diff(pos) > 0).all() and not set(pos) & {0, 127}
    assert not out["masked_positions"][row, n[row]:].any()
    np.testing.assert_array_equal(out["masked_ids"][row, :n[row]], ids[row, pos])
    unchanged = np.ones(length, bool)
    unchanged[pos] = False
    np.testing.assert_array_equal(out["input_ids"][row, unchanged], ids[row, unchanged])
    new = out["input_ids"][row, pos]
    assert ((new >= first) & (new < vocab) | (new == mask_id)).all()
    kinds += [(new == mask_id).sum(), ((new != mask_id) & (new != ids[row, pos])).sum(),
              (new == ids[row, pos]).sum()]
    hits[pos] += 1
  np.testing.assert_allclose(kinds / kinds.sum(), [0.8, 0.1, 0.1], atol=0.02)
  # Every maskable position is chosen about equally often (19/126 of ~397 rows = ~60 each).
  assert hits[1:127].min() > 30 and hits[1:127].max() < 95


def test_a_rows_corruption_depends_on_its_example_index_only():
  ids = np.tile(np.arange(64, dtype=np.int32) + 100, (6, 1))
  kw = dict(rate=0.15, max_predictions=10, mask_id=4, regular_ids=np.arange(5, 1000))
  whole = masking.mask_tokens(ids, ids > 0, 7, np.arange(10, 16), **kw)
  part = masking.mask_tokens(ids[:2], ids[:2] > 0, 7, np.array([14, 15]), **kw)
  other_seed = masking.mask_tokens(ids, ids > 0, 8, np.arange(10, 16), **kw)
  for k in whole:
    np.testing.assert_array_equal(whole[k][4:], part[k])
  assert not np.array_equal(whole["masked_positions"], other_seed["masked_positions"])
  assert len({tuple(r) for r in whole["masked_positions"]}) == 6  # rows differ from each other


@pytest.mark.parametrize("task", ["none", "nsp", "sop"])
def test_mlm_never_masks_cls_sep_or_padding(task):
  """At mask_rate 1 every maskable token is predicted: exactly the chunk's tokens, never the
  [CLS], the [SEP]s or the padding around them."""
  specials = tokenizer_lib.SpecialIds(pad=0, cls=1, sep=2, mask=3, eos=-1, special=(0, 1, 2, 3))
  rng = np.random.default_rng(0)
  chunks = examples_lib.DenseRows([rng.integers(10, 100, n) for n in (1, 2, 5, 9, 9, 3)])
  examples = examples_lib.EncoderExamples(
      chunks, seq_len=12, specials=specials, vocab_size=100, max_predictions=12, seed=0,
      objective_cfg=types.SimpleNamespace(sentence_task=task, mask_rate=1.0))
  indices = np.arange(2 * len(chunks))
  rows, pieces = examples.rows(indices), examples.pieces(indices)
  used = rows["masked_weights"] > 0
  np.testing.assert_array_equal(used.sum(1), pieces["a_len"] + pieces["b_len"])
  assert not np.isin(rows["masked_ids"][used], [specials.pad, specials.cls, specials.sep]).any()
  assert (rows["masked_ids"][used] >= 10).all()


def test_keyed_uniforms_are_uniform_and_independent():
  u = keyed_random.uniform(3, np.arange(2000), 0, 50)
  assert u.min() >= 0 and u.max() < 1
  counts = np.histogram(u, bins=10, range=(0, 1))[0]
  assert np.abs(counts / u.size - 0.1).max() < 0.005
  v = keyed_random.uniform(3, np.arange(2000), 1, 50)
  assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.01  # streams
  assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.01  # neighbouring rows
  k = keyed_random.integers(3, np.arange(2000), 2, 1, np.arange(2000) % 7 + 1)[:, 0]
  assert (k >= 0).all() and (k < np.arange(2000) % 7 + 1).all() and k.max() == 6


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


@pytest.mark.parametrize("task", ["none", "nsp", "sop"])
def test_encoder_rows_rebuild_their_chunks(tiny, tmp_path, task):
  config = tiny("mlm")
  config.objective.sentence_task = task
  data = data_lib.build(config, str(tmp_path))
  examples, tok = data.train.examples, data.tokenizer
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  indices = np.arange(3 * len(examples))  # three epochs
  rows, pieces = examples.rows(indices), examples.pieces(indices)
  chunk_of = examples.chunk
  labels = rows.get("sentence_label", np.zeros(len(indices), np.int32))
  for i in range(len(indices)):
    ids, mask = rows["input_ids"][i].copy(), rows["attention_mask"][i].astype(bool)
    used = rows["masked_weights"][i] > 0
    ids[rows["masked_positions"][i][used]] = rows["masked_ids"][i][used]  # undo the corruption
    chunk = chunk_of(pieces["a_chunk"][i])
    real = ids[mask]
    assert real[0] == cls and real[-1] == sep and not mask[len(real):].any()
    if task == "none":
      np.testing.assert_array_equal(real[1:-1], chunk)
      continue
    (first_sep,) = np.flatnonzero(real == sep)[:1]
    a, b = real[1:first_sep], real[first_sep + 1:-1]
    types = rows["token_type_ids"][i][mask]
    assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:] == 1).all()
    if labels[i] == 0:  # A B: the chunk, in order
      np.testing.assert_array_equal(np.concatenate([a, b]), chunk)
    elif task == "sop":  # B A: swapped
      np.testing.assert_array_equal(np.concatenate([b, a]), chunk)
      assert (len(a) and len(b)) or len(chunk) == 1
    else:  # nsp: A, then the start of another chunk
      np.testing.assert_array_equal(a, chunk[:len(a)])
      np.testing.assert_array_equal(b, chunk_of(pieces["b_chunk"][i])[:len(b)])
  if task != "none":
    assert 0.4 < labels.mean() < 0.6
  # Each epoch visits every chunk once, in a different order.
  epochs = pieces["a_chunk"].reshape(3, -1)
  assert all(sorted(e) == list(range(len(examples))) for e in epochs)
  assert not np.array_equal(epochs[0], epochs[1])


def _data_cfg(**kw):
  import ml_collections  # pylint: disable=g-import-not-at-top
  base = dict(source="bbc_news", text_field="text", eval_fraction=0.05, seq_len=64, tokenizer="",
              vocab_size=1000)
  base.update(kw)
  return ml_collections.ConfigDict(base)
