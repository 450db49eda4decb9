"""Token classification (NER) with IOB2 tags: words -> sub-tokens -> per-word predictions -> spans.

A word is labelled on its FIRST sub-token only; its later sub-tokens, [CLS], [SEP] and padding get
-100, which the loss ignores. Rows are [CLS] pieces [SEP] [PAD]..., always `max_len` long, so a
jitted model sees one shape. Too long a sentence is cut at a word boundary: a word is either whole
in the row or absent, and `truncated_words` counts the absent ones (their prediction is `fill`).

Raw text goes through `words_with_offsets` (BERT's own whitespace/punctuation split, with character
offsets), the model, `word_predictions`, and `entity_spans`, which turns the words' IOB2 tags back
into exact character spans of the original text.
"""
import numpy as np
import tokenizers

from research.data.tokenizer import SpecialIds
from research.objectives.token_classification import IGNORE  # the label the loss skips


def encode_words(tokenizer: tokenizers.Tokenizer, words: list[str], max_len: int,
                 label_ids: list[int] | None = None) -> dict:
  """One pre-split sentence as fixed-length int32 arrays.

  Returns `input_ids`, `attention_mask`, `token_type_ids`, `labels` (the word's label on its first
  sub-token, -100 elsewhere; all -100 without `label_ids`), `word_index` (the word a token comes
  from, -1 for specials and padding), each of length `max_len`, and `truncated_words` (an int).
  """
  if label_ids is not None and len(label_ids) != len(words):
    raise ValueError(f"{len(label_ids)} labels for {len(words)} words")
  if tokenizer.truncation or tokenizer.padding:
    raise ValueError("encode_words truncates and pads by itself: give it a tokenizer without "
                     "truncation or padding (tokenizer.no_truncation(), tokenizer.no_padding())")
  if max_len < 2:
    raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
  enc = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
  ids, word_ids = enc.ids, enc.word_ids
  kept_words = len(words)
  if len(ids) > max_len - 2:  # cut before the word whose pieces do not all fit
    kept_words = word_ids[max_len - 2]
    cut = word_ids.index(kept_words)
    ids, word_ids = ids[:cut], word_ids[:cut]
  n = len(ids) + 2
  s = SpecialIds.of(tokenizer)
  out = {"input_ids": np.full(max_len, s.pad, np.int32),
         "attention_mask": np.zeros(max_len, np.int32),
         "token_type_ids": np.zeros(max_len, np.int32),
         "labels": np.full(max_len, IGNORE, np.int32),
         "word_index": np.full(max_len, -1, np.int32)}
  out["input_ids"][:n] = [s.cls, *ids, s.sep]
  out["attention_mask"][:n] = 1
  out["word_index"][1:n - 1] = word_ids
  if label_ids is not None and ids:
    first = np.flatnonzero(np.diff(word_ids, prepend=-1) != 0)  # each word's first piece
    out["labels"][1 + first] = np.asarray(label_ids)[np.asarray(word_ids)[first]]
  out["truncated_words"] = len(words) - kept_words
  return out


def word_predictions(token_predictions: np.ndarray, word_index: np.ndarray, num_words: int,
                     fill: int) -> list[int]:
  """Each word's prediction, read on its first sub-token; `fill` for words not in the row."""
  token_predictions, word_index = np.asarray(token_predictions), np.asarray(word_index)
  words, first = np.unique(word_index, return_index=True)  # first position of each word
  out = np.full(num_words, fill, dtype=token_predictions.dtype)
  keep = (words >= 0) & (words < num_words)
  out[words[keep]] = token_predictions[first[keep]]
  return out.tolist()


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
  """Splits raw text as BERT's pre-tokenizer does: (word, start, end) character offsets."""
  return [(word, start, end) for word, (start, end) in
          tokenizers.pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)]


def entity_spans(words_offsets: list[tuple[str, int, int]], tags: list[str],
                 text: str) -> list[dict]:
  """Decodes IOB2 word tags into entities `{'type', 'start', 'end', 'text'}` of `text`.

  As conlleval reads tags: B-X starts an entity; I-X continues one of type X, and starts a new one
  after O or after an entity of another type. `text` is `text[start:end]`, from the first word's
  start to the last word's end, so it keeps the original spacing and case.
  """
  if len(tags) != len(words_offsets):
    raise ValueError(f"{len(tags)} tags for {len(words_offsets)} words")
  entities, current = [], None
  for (_, start, end), tag in zip(words_offsets, tags):
    prefix, _, kind = tag.partition("-")
    if tag != "O" and (prefix not in ("B", "I") or not kind):
      raise ValueError(f"not an IOB2 tag: {tag!r}")
    if current and prefix == "I" and kind == current["type"]:
      current["end"] = end
      continue
    current = {"type": kind, "start": start, "end": end} if tag != "O" else None
    if current:
      entities.append(current)
  return [{**e, "text": text[e["start"]:e["end"]]} for e in entities]
