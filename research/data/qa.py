"""Extractive question answering (SQuAD v1.1 and v2.0): examples -> windows -> answer spans.

An example is `{'id', 'question', 'context', 'answers': {'text': [...], 'answer_start': [...]}}`;
empty answer lists mean unanswerable (v2.0). Each example becomes one or more features
[CLS] question [SEP] context window [SEP] [PAD]..., `max_len` long: a context too long for one row
is cut by the tokenizer itself into windows that overlap by `doc_stride` tokens, so every answer
lies whole in at least one window. A window's label is the answer's first and last token, or
(0, 0), the [CLS] position, when the answer is not wholly inside it (or there is none).

`postprocess` goes back: the best-scoring valid span over all of an example's windows, as exact
character offsets of its context, or '' when (v2.0) the [CLS] "no answer" score beats it.
"""
import numpy as np
import tokenizers

from research.data.tokenizer import SpecialIds

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")  # the [F, max_len] arrays


def prepare_features(examples: list[dict], tokenizer: tokenizers.Tokenizer, max_len: int = 384,
                     doc_stride: int = 128, max_question_len: int = 64):
  """Tokenizes examples into fixed-length, possibly overlapping, features.

  Returns `(features, spans, stats)`: `features` holds int32 arrays [num_features, ...]:
  input_ids, attention_mask, token_type_ids (shape [F, max_len]) and start_positions,
  end_positions, example_index (shape [F]); `spans[f][t]` is the (char_start, char_end) of token t
  in its context, None for question, special and padding tokens; `stats` counts 'examples' (given),
  'skipped' (examples with an answer that is not at its answer_start: no features, never a wrong
  label), 'answers_not_in_context', 'truncated_questions' (cut to `max_question_len` tokens) and
  'features'.
  """
  num_specials = tokenizer.num_special_tokens_to_add(is_pair=True)
  if num_specials == 0:
    raise ValueError("the tokenizer adds no [CLS]/[SEP] to a pair: build it with post_process=True")
  if max_len - num_specials - max_question_len <= doc_stride:
    raise ValueError(f"doc_stride={doc_stride} must be smaller than the context room of a window, "
                     f"max_len - {num_specials} specials - max_question_len = "
                     f"{max_len - num_specials - max_question_len}")
  # Copies, so that the caller's truncation and padding settings stay untouched.
  plain, tok = (tokenizers.Tokenizer.from_str(tokenizer.to_str()) for _ in range(2))
  plain.no_truncation()
  plain.no_padding()
  pad = SpecialIds.of(tokenizer).pad
  tok.enable_truncation(max_len, stride=doc_stride, strategy="only_second")
  tok.enable_padding(length=max_len, pad_id=pad, pad_token=tok.id_to_token(pad))
  rows, spans = {k: [] for k in TOKEN_KEYS + ("start_positions", "end_positions",
                                               "example_index")}, []
  stats = dict(examples=len(examples), skipped=0, answers_not_in_context=0, truncated_questions=0)
  for index, ex in enumerate(examples):
    context, answers = ex["context"], ex["answers"]
    bad = sum(context[s:s + len(t)] != t for t, s in zip(answers["text"], answers["answer_start"]))
    if bad:
      stats["answers_not_in_context"] += bad
      stats["skipped"] += 1
      continue
    question = ex["question"]
    q_offsets = plain.encode(question, add_special_tokens=False).offsets
    if len(q_offsets) > max_question_len:  # cut the text where the last kept token ends
      question = question[:q_offsets[max_question_len - 1][1]]
      stats["truncated_questions"] += 1
    answer = None
    if answers["text"]:
      text, start = answers["text"][0], answers["answer_start"][0]
      answer = (start + len(text) - len(text.lstrip()), start + len(text.rstrip()))
    encoding = tok.encode(question, context)
    for enc in [encoding, *encoding.overflowing]:
      token_spans = [o if s == 1 else None for o, s in zip(enc.offsets, enc.sequence_ids)]
      first, last = _answer_tokens(token_spans, answer)
      for key, value in zip(rows, (enc.ids, enc.attention_mask, enc.type_ids, first, last, index)):
        rows[key].append(value)
      spans.append(token_spans)
  features = {k: np.asarray(v, np.int32).reshape(len(spans), *[max_len] * (k in TOKEN_KEYS))
              for k, v in rows.items()}
  stats["features"] = len(spans)
  return features, spans, stats


def _answer_tokens(token_spans: list, answer: tuple[int, int] | None) -> tuple[int, int]:
  """The first and last token of the answer's characters [start, end), or (0, 0) if not all here."""
  context = [t for t, span in enumerate(token_spans) if span is not None]
  if answer is None or not context or answer[1] <= answer[0]:
    return 0, 0
  starts = np.asarray([token_spans[t][0] for t in context])
  ends = np.asarray([token_spans[t][1] for t in context])
  start, end = answer
  if not starts[0] <= start or not end <= ends[-1]:
    return 0, 0
  first = np.searchsorted(starts, start, side="right") - 1  # last token starting at or before it
  last = np.searchsorted(ends, end, side="left")  # first token ending at or after it
  return context[first], context[last]


def postprocess(examples: list[dict], features: dict, spans: list, start_logits, end_logits,
                n_best: int = 20, max_answer_len: int = 30, version_2: bool = False,
                null_threshold: float = 0.0) -> dict:
  """Each example's answer, `{id: {'text', 'start', 'end', 'score'}}`, from per-token logits.

  Over all of an example's features, the `n_best` start and the `n_best` end tokens among the
  context tokens make candidate spans; a span is valid when end >= start and it is at most
  `max_answer_len` tokens long; its score is start logit + end logit. The best one is given as
  character offsets of the context, `text == context[start:end]`. With `version_2`, the answer is
  '' (start = end = -1, score = the null score) when null_score - best > `null_threshold`, the null
  score being the lowest start[0] + end[0] ([CLS]) over the features. An example with no valid span
  also gets ''. Examples without features (skipped by `prepare_features`) are left out.
  """
  start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
  by_example = {}
  for f, index in enumerate(np.asarray(features["example_index"])):
    by_example.setdefault(int(index), []).append(f)
  predictions = {}
  for index, feature_ids in by_example.items():
    context = examples[index]["context"]
    best = {"text": "", "start": -1, "end": -1, "score": -np.inf}
    null_score = min(start_logits[f][0] + end_logits[f][0] for f in feature_ids)
    for f in feature_ids:
      in_context = np.asarray([span is not None for span in spans[f]])
      s_logit = np.where(in_context, start_logits[f], -np.inf)
      e_logit = np.where(in_context, end_logits[f], -np.inf)
      top_s = np.argsort(-s_logit)[:n_best]
      top_e = np.argsort(-e_logit)[:n_best]
      score = s_logit[top_s][:, None] + e_logit[top_e][None, :]
      length = top_e[None, :] - top_s[:, None] + 1
      score = np.where((length >= 1) & (length <= max_answer_len), score, -np.inf)
      i, j = np.unravel_index(np.argmax(score), score.shape)
      if score[i, j] > best["score"]:
        start, end = spans[f][top_s[i]][0], spans[f][top_e[j]][1]
        best = {"text": context[start:end], "start": start, "end": end, "score": float(score[i, j])}
    if version_2 and null_score - best["score"] > null_threshold:
      best = {"text": "", "start": -1, "end": -1, "score": float(null_score)}
    predictions[examples[index]["id"]] = best
  return predictions
