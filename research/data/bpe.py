"""BPE merges learned as a pure function of the word counts: the trainer behind our tokenizers.

The `tokenizers` trainers are not that. Their BPE loop (which WordPiece training runs with a '##'
prefix) breaks ties between equally frequent pairs by the pieces' ids, and numbers the
word-inner characters ('##e') in the order it meets them in a hash map seeded afresh in each
process: two runs on BBC News gave different WordPiece vocabularies (`##egas` in one,
`##nefteg` in the other). No setting (threads, PYTHONHASHSEED) fixes it. Its source shows a
second hazard: one pair can sit in the heap as several equal entries, each for some of its
words, popped in an order that follows hash maps too.

Here: words in sorted order; ids in a fixed order (specials, then the alphabet as given, then
merged pieces as they are made); the pair with the highest exact count merges next, in every
word at once, ties to the pair of lower ids (the rule `tokenizers` follows). A merged piece that
already exists (a + ##bc and ab + ##c both give 'abc') adds a merge, not a piece. On BBC News
this gives byte for byte the tokenizer.json the library gives when its hash order happens to be
the sorted one.
"""
import collections
import contextlib
import gc
import heapq
import re

import regex


def learn(word_counts: dict, alphabet, vocab_size: int, specials=(), prefix: str = ""):
  """Merges pairs of pieces until the vocabulary has `vocab_size` entries (or nothing is left).

  `word_counts`: {word: count}, words already normalized and pre-tokenized. `alphabet`: every
  single-character piece, in id order; with a `prefix` (WordPiece's '##'), the word-inner
  characters are the pieces prefix + c and must be in it too. Returns ({piece: id}, merges as
  [(left, right)] in the order made).
  """
  pieces = list(dict.fromkeys([*specials, *alphabet]))
  ids = {p: i for i, p in enumerate(pieces)}
  words, counts = [], []
  for word, count in sorted(word_counts.items()):
    words.append([ids[word[0]]] + [ids[prefix + c] for c in word[1:]])
    counts.append(count)

  with _no_gc():  # many small containers and no cycles: collecting cost a third of the time
    pair_counts, where = collections.Counter(), collections.defaultdict(set)
    for w, (word, count) in enumerate(zip(words, counts)):
      for pair in zip(word, word[1:]):
        pair_counts[pair] += count
        where[pair].add(w)
    heap = [(-count, a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)  # entries order by (count, pair): pops follow no push order

    merges = []
    while len(pieces) < vocab_size and heap:
      count, a, b = heapq.heappop(heap)
      if -count != pair_counts[a, b]:
        continue  # stale: the pair's count has changed, and was pushed again
      merged = pieces[a] + pieces[b].removeprefix(prefix)
      new = ids.get(merged)
      if new is None:
        new = ids[merged] = len(pieces)
        pieces.append(merged)
      merges.append((pieces[a], pieces[b]))
      changed = set()
      for w in where.pop((a, b)):  # every word that held the pair (some may no longer)
        old, n = words[w], counts[w]
        i = old.index(a) if a in old else len(old)
        word, last = old[:i], len(old) - 1
        while i <= last:
          if old[i] != a or i == last or old[i + 1] != b:
            word.append(old[i])
            i += 1
            continue
          if word:  # x a b -> x new
            x = word[-1]
            pair_counts[x, a] -= n
            pair_counts[x, new] += n
            where[x, new].add(w)
            changed.add((x, a))
            changed.add((x, new))
          if i + 1 < last:  # a b y -> new y
            y = old[i + 2]
            pair_counts[b, y] -= n
            pair_counts[new, y] += n
            where[new, y].add(w)
            changed.add((b, y))
            changed.add((new, y))
          word.append(new)
          i += 2
        words[w] = word
      pair_counts[a, b] = 0
      for pair in changed:
        if pair_counts[pair] > 0:
          heapq.heappush(heap, (-pair_counts[pair], *pair))
  return ids, merges


@contextlib.contextmanager
def _no_gc():
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def bert_word_counts(texts, normalizer, pre_tokenizer) -> collections.Counter:
  """{word: count} as `pre_tokenizer(normalizer(text))` splits the texts (BERT's pipeline).

  BERT's pre-tokenizer drops whitespace and isolates punctuation, one character at a time; each
  character of the texts is classed by the pre-tokenizer itself, then one regular expression
  splits them (2-3x faster than calling it from Python on every text).
  """
  texts = [normalizer.normalize_str(t) for t in texts]
  space, punct = [], []
  for c in sorted(set().union(*map(set, texts))):
    split = [w for w, _ in pre_tokenizer.pre_tokenize_str(f"a{c}a")]
    if split == ["a", "a"]:
      space.append(c)
    elif split == ["a", c, "a"]:
      punct.append(c)
    elif split != [f"a{c}a"]:
      raise ValueError(f"pre-tokenizer splits {c!r} in a way BERT's does not: {split}")
  cls = lambda chars: "".join(map(re.escape, chars))
  pattern = re.compile(f"[{cls(punct)}]|[^{cls(space + punct)}]+" if punct else
                       f"[^{cls(space)}]+" if space else ".+", re.S)
  counts = collections.Counter()
  for text in texts:
    counts.update(pattern.findall(text))
  return counts


# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with one leading space.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_to_char() -> dict:
  """GPT-2's map from the 256 bytes to printable characters (a space is 'Ġ')."""
  kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  moved = [b for b in range(256) if b not in kept]
  return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def byte_level_word_counts(texts) -> collections.Counter:
  """{word: count} as `pre_tokenizers.ByteLevel(add_prefix_space=False)` splits the texts."""
  pattern, chars = regex.compile(GPT2_PATTERN), byte_to_char()
  raw = collections.Counter()
  for text in texts:
    raw.update(pattern.findall(text))
  counts = collections.Counter()
  for word, count in raw.items():
    counts["".join(chars[b] for b in word.encode("utf-8"))] += count
  return counts
