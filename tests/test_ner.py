"""NER data: first-sub-token labels, truncation at word boundaries, predictions back to spans."""
import numpy as np
import pytest

from research.data import ner, sources, tokenizer as tokenizer_lib

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXT = "Yesterday, Angela Merkel (the chancellor) flew from Zürich to Berlin's airport."
GOLD = {"Angela": "B-PER", "Merkel": "I-PER", "Zürich": "B-LOC", "Berlin": "B-LOC"}


@pytest.fixture(scope="module")
def tok():
  """A small WordPiece (1,000 pieces): names split into several pieces."""
  texts = [text for _, text in sources.read_bbc_news()[:300]] + [TEXT]
  trained = tokenizer_lib.train_wordpiece(texts, vocab_size=1000)
  return tokenizer_lib.bert_wordpiece(trained.get_vocab(), post_process=True)


def _words_and_labels():
  words = [w for w, _, _ in ner.words_with_offsets(TEXT)]
  return words, [TAGS.index(GOLD.get(w, "O")) for w in words]


def test_labels_on_first_sub_token_only(tok):
  words, labels = _words_and_labels()
  pieces = [len(tok.encode([w], is_pretokenized=True, add_special_tokens=False).ids)
            for w in words]
  assert max(pieces) > 2  # the test means something only if words split
  out = ner.encode_words(tok, words, max_len=64, label_ids=labels)
  n = sum(pieces) + 2
  ids = tok.get_vocab()
  assert out["input_ids"][0] == ids["[CLS]"] and out["input_ids"][n - 1] == ids["[SEP]"]
  assert (out["input_ids"][n:] == ids["[PAD]"]).all()
  assert out["attention_mask"].tolist() == [1] * n + [0] * (64 - n)
  expected_labels, expected_index = [-100], [-1]
  for w, (count, label) in enumerate(zip(pieces, labels)):
    expected_labels += [label] + [-100] * (count - 1)
    expected_index += [w] * count
  assert out["labels"].tolist() == expected_labels + [-100] * (64 - n + 1)
  assert out["word_index"].tolist() == expected_index + [-1] * (64 - n + 1)
  assert out["truncated_words"] == 0
  assert all(out[k].dtype == np.int32 and out[k].shape == (64,)
             for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "word_index"))
  unlabelled = ner.encode_words(tok, words, max_len=64)
  assert (unlabelled["labels"] == -100).all()
  np.testing.assert_array_equal(unlabelled["input_ids"], out["input_ids"])


def test_truncation_keeps_whole_words_and_counts_the_rest(tok):
  words, labels = _words_and_labels()
  pieces = [len(tok.encode([w], is_pretokenized=True, add_special_tokens=False).ids)
            for w in words]
  ends = np.cumsum(pieces)
  max_len = int(ends[5]) + 2 + pieces[6] - 1  # room for words 0..5 and part of word 6
  out = ner.encode_words(tok, words, max_len=max_len, label_ids=labels)
  assert out["truncated_words"] == len(words) - 6
  assert out["word_index"].max() == 5
  assert out["attention_mask"].sum() == ends[5] + 2
  predicted = ner.word_predictions(out["labels"], out["word_index"], len(words), fill=-1)
  assert predicted == labels[:6] + [-1] * (len(words) - 6)


def test_word_predictions_round_trip(tok):
  words, labels = _words_and_labels()
  out = ner.encode_words(tok, words, max_len=64, label_ids=labels)
  assert ner.word_predictions(out["labels"], out["word_index"], len(words), fill=-1) == labels
  # Later sub-tokens are ignored: scribbling on them changes nothing.
  noisy = np.where(out["labels"] == -100, 99, out["labels"])
  assert ner.word_predictions(noisy, out["word_index"], len(words), fill=-1) == labels


def test_raw_text_to_entity_spans(tok):
  words_offsets = ner.words_with_offsets(TEXT)
  assert all(TEXT[start:end] == word for word, start, end in words_offsets)
  words, labels = _words_and_labels()
  out = ner.encode_words(tok, words, max_len=64, label_ids=labels)
  predicted = ner.word_predictions(out["labels"], out["word_index"], len(words), fill=0)
  entities = ner.entity_spans(words_offsets, [TAGS[p] for p in predicted], TEXT)
  assert [(e["type"], e["text"]) for e in entities] == [
      ("PER", "Angela Merkel"), ("LOC", "Zürich"), ("LOC", "Berlin")]
  assert all(TEXT[e["start"]:e["end"]] == e["text"] for e in entities)


def test_entity_spans_reads_iob2_as_conlleval():
  text = "a b c d e f"
  words = ner.words_with_offsets(text)
  tags = ["I-PER", "I-PER", "I-LOC", "O", "I-ORG", "B-ORG"]
  assert [e["text"] for e in ner.entity_spans(words, tags, text)] == ["a b", "c", "e", "f"]
  with pytest.raises(ValueError, match="not an IOB2 tag: 'PER'"):
    ner.entity_spans(words, ["PER"] + ["O"] * 5, text)
  with pytest.raises(ValueError, match="5 tags for 6 words"):
    ner.entity_spans(words, ["O"] * 5, text)


def test_encode_words_rejects_bad_input(tok):
  with pytest.raises(ValueError, match="1 labels for 2 words"):
    ner.encode_words(tok, ["a", "b"], max_len=8, label_ids=[0])
  padded = tokenizer_lib.bert_wordpiece(tok.get_vocab(), post_process=True)
  padded.enable_padding(length=8)
  with pytest.raises(ValueError, match="without truncation or padding"):
    ner.encode_words(padded, ["a", "b"], max_len=8)
