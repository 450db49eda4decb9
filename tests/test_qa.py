"""Extractive QA data: overlapping windows, answer token labels, and logits back to answer text."""
import numpy as np
import pytest

from research.data import qa, sources, tokenizer as tokenizer_lib

MAX_LEN, STRIDE, MAX_Q = 64, 16, 16
ANSWER = "Angela Merkel"


@pytest.fixture(scope="module")
def tok():
  texts = [text for _, text in sources.read_bbc_news()[:300]] + [ANSWER]
  trained = tokenizer_lib.train_wordpiece(texts, vocab_size=1000)
  return tokenizer_lib.bert_wordpiece(trained.get_vocab(), post_process=True)


@pytest.fixture(scope="module")
def filler():
  """A context of ~1,500 characters: many windows of MAX_LEN tokens."""
  return " ".join(sources.read_bbc_news()[0][1].split())[:1500].rsplit(" ", 1)[0] + " "


def _with_answer(filler, start):
  """The filler with ANSWER inserted at `start`, the start of one of its words."""
  return filler[:start] + ANSWER + " " + filler[start:]


def _example(context, answer_start, id_="q", question="Who was the chancellor?", text=ANSWER):
  answers = {"text": [text], "answer_start": [answer_start]} if answer_start is not None else {
      "text": [], "answer_start": []}
  return {"id": id_, "question": question, "context": context, "answers": answers}


def _prepare(tok, examples):
  return qa.prepare_features(examples, tok, max_len=MAX_LEN, doc_stride=STRIDE,
                             max_question_len=MAX_Q)


def _context_tokens(spans, f):
  return [span for span in spans[f] if span is not None]


def _only_in_second_window(tok, filler):
  """The filler with ANSWER inserted just after the first window's end: in window 2, not 1."""
  _, spans, _ = _prepare(tok, [_example(filler, None)])
  cut = filler.index(" ", _context_tokens(spans, 0)[-1][1])
  context = filler[:cut] + " " + ANSWER + filler[cut:]
  return context, cut + 1


def test_long_context_gives_windows_overlapping_by_doc_stride(tok, filler):
  features, spans, stats = _prepare(tok, [_example(filler, None)])
  assert stats["features"] > 3 and stats["examples"] == 1
  assert all(v.dtype == np.int32 and len(v) == stats["features"] for v in features.values())
  assert features["input_ids"].shape == (stats["features"], MAX_LEN)
  windows = [_context_tokens(spans, f) for f in range(stats["features"])]
  for before, after in zip(windows, windows[1:]):
    assert before[-STRIDE:] == after[:STRIDE]
    assert before[-STRIDE - 1] != after[0]  # overlap is exactly doc_stride tokens
  assert windows[0][0][0] == 0 and windows[-1][-1][1] == len(filler.rstrip())
  assert (features["start_positions"] == 0).all() and (features["end_positions"] == 0).all()
  assert tok.truncation is None and tok.padding is None  # the caller's tokenizer is untouched


def test_labels_recover_the_answer_exactly(tok, filler):
  examples = [_example(_with_answer(filler, s), s, id_=str(s))
              for s in (0, filler.index(" ", 700) + 1, len(filler))]
  features, spans, stats = _prepare(tok, examples)
  for index, ex in enumerate(examples):
    ex_features = np.flatnonzero(features["example_index"] == index)
    answer_start = ex["answers"]["answer_start"][0]
    labelled = 0
    for f in ex_features:
      start, end = features["start_positions"][f], features["end_positions"][f]
      window = _context_tokens(spans, f)
      inside = window[0][0] <= answer_start and answer_start + len(ANSWER) <= window[-1][1]
      assert (start > 0) == inside
      if inside:
        labelled += 1
        assert end > start  # the answer splits into several tokens
        assert ex["context"][spans[f][start][0]:spans[f][end][1]] == ANSWER
    assert labelled >= 1
  assert stats["answers_not_in_context"] == 0 and stats["skipped"] == 0


def _one_hot_logits(features, rng, gold):
  """Small noise everywhere; +5 on the gold start and end tokens of features[f] for f in gold."""
  shape = features["input_ids"].shape
  start, end = rng.normal(0, 0.1, shape), rng.normal(0, 0.1, shape)
  for f in gold:
    start[f, features["start_positions"][f]] += 5
    end[f, features["end_positions"][f]] += 5
  return start, end


def test_postprocess_returns_the_gold_span_from_the_second_window(tok, filler):
  context, answer_start = _only_in_second_window(tok, filler)
  examples = [_example(filler, None, id_="other"), _example(context, answer_start, id_="gold")]
  features, spans, _ = _prepare(tok, examples)
  gold = np.flatnonzero(features["start_positions"] > 0)
  assert features["example_index"][gold].tolist() == [1]
  assert gold[0] - np.flatnonzero(features["example_index"] == 1)[0] == 1  # the 2nd window
  start, end = _one_hot_logits(features, np.random.default_rng(0), gold)
  predictions = qa.postprocess(examples, features, spans, start, end)
  assert predictions["gold"]["text"] == ANSWER
  assert (predictions["gold"]["start"], predictions["gold"]["end"]) == (
      answer_start, answer_start + len(ANSWER))
  other = predictions["other"]
  assert other["text"] == filler[other["start"]:other["end"]] != ""


def test_version_2_answers_nothing_when_the_null_score_wins(tok, filler):
  context, answer_start = _only_in_second_window(tok, filler)
  examples = [_example(context, answer_start)]
  features, spans, _ = _prepare(tok, examples)
  start, end = _one_hot_logits(features, np.random.default_rng(1),
                               np.flatnonzero(features["start_positions"] > 0))
  start[:, 0] += 8  # [CLS] in every window: null score ~ 8 < the gold span's ~ 10
  answer = qa.postprocess(examples, features, spans, start, end, version_2=True)["q"]
  assert answer["text"] == ANSWER
  start[:, 0] += 4  # null score ~ 12 beats the span's ~ 10
  null = qa.postprocess(examples, features, spans, start, end, version_2=True)["q"]
  assert null == {"text": "", "start": -1, "end": -1,
                  "score": pytest.approx(min(start[:, 0] + end[:, 0]))}
  assert qa.postprocess(examples, features, spans, start, end)["q"]["text"] == ANSWER  # v1.1
  assert qa.postprocess(examples, features, spans, start, end, version_2=True,
                        null_threshold=5.0)["q"]["text"] == ANSWER


def test_answer_not_at_answer_start_is_counted_and_skipped(tok, filler):
  at = filler.index(" ", 100) + 1
  context = _with_answer(filler, at)
  examples = [_example(context, at + 1, id_="bad"), _example(context, at, id_="good")]
  features, spans, stats = _prepare(tok, examples)
  assert stats["answers_not_in_context"] == 1 and stats["skipped"] == 1
  assert set(features["example_index"].tolist()) == {1}
  assert set(qa.postprocess(examples, features, spans, *_one_hot_logits(
      features, np.random.default_rng(2), [])).keys()) == {"good"}


def test_long_questions_are_truncated(tok, filler):
  question = "Who was the chancellor of Germany in the year that the election was held? " * 3
  features, _, stats = _prepare(tok, [_example(filler, None, question=question)])
  assert stats["truncated_questions"] == 1
  first = features["token_type_ids"][0][features["attention_mask"][0] == 1]
  assert (first == 0).sum() == MAX_Q + 2  # [CLS] question [SEP]


def test_doc_stride_must_fit_in_a_window(tok):
  with pytest.raises(ValueError, match="doc_stride=45 must be smaller than the context room"):
    qa.prepare_features([], tok, max_len=64, doc_stride=45, max_question_len=16)
