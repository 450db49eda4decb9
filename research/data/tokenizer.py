"""Tokenizers (HF `tokenizers`): train one on the corpus, or load `tokenizer.json` / `vocab.txt`.

Encoders get a BERT WordPiece tokenizer (lower-cased, [PAD] [UNK] [CLS] [SEP] [MASK]); decoders a
GPT-2 byte-level BPE tokenizer (<|endoftext|>). Their vocabularies are learned by `bpe`, not by
the `tokenizers` trainers, so the same texts give the same tokenizer in any process. A trained
tokenizer is saved as WORKDIR/tokenizer.json and reused when the run resumes.

Padding and truncation are ours (research/data/encoding.py, examples.py, ...), never the
tokenizer's: many Hugging Face tokenizer.json files carry their own (all-MiniLM-L6-v2's: pad and
truncate every encoding to 128 ids), which would put [PAD]s inside our rows and cut texts before
we count them. Every tokenizer this module loads or trains comes out of `owned`, with both off.
"""
import collections
import dataclasses
import json
import os

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from research.data import bpe
from research.errors import UserError

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT_EOS = "<|endoftext|>"


# Names of the special tokens, in the spellings of BERT, RoBERTa/Llama and GPT-2.
SPECIAL_NAMES = {"pad": ("[PAD]", "<pad>"), "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"),
                 "mask": ("[MASK]", "<mask>"), "eos": (GPT_EOS, "</s>"), "unk": ("[UNK]", "<unk>")}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the special tokens an objective needs (-1 where the tokenizer has none)."""
  pad: int
  cls: int
  sep: int
  mask: int
  eos: int
  special: tuple  # every special token id: never masked, never a random MLM replacement

  @classmethod
  def of(cls, tok: tokenizers.Tokenizer) -> "SpecialIds":
    def first(names):
      return next((tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None), -1)
    ids = {role: first(names) for role, names in SPECIAL_NAMES.items()}
    special = {i for i in ids.values() if i >= 0}
    special |= {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    return cls(pad=max(ids["pad"], 0), cls=ids["cls"], sep=ids["sep"], mask=ids["mask"],
               eos=ids["eos"], special=tuple(sorted(special)))

  def regular_ids(self, vocab_size: int):
    """The ids an MLM may put in as random replacements."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    return np.setdiff1d(np.arange(vocab_size, dtype=np.int32), np.asarray(self.special, np.int32))


def bert_wordpiece(vocab: dict, lowercase: bool = True, post_process: bool = False):
  """BERT's WordPiece pipeline over a {token: id} vocabulary.

  With `post_process`, encoding with special tokens gives [CLS] A [SEP] (B [SEP]), as
  transformers' BERT tokenizer does.
  """
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  if post_process:
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  return tok


def byte_level_bpe(vocab_path: str, merges_path: str, roberta: bool):
  """GPT-2's byte-level BPE from vocab.json + merges.txt; RoBERTa adds <s> A </s>."""
  tok = tokenizers.Tokenizer(models.BPE.from_file(vocab_path, merges_path))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  if roberta:
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True,
        add_prefix_space=False)
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  return tok


def with_pair_template(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """A copy of `tok` whose encode(a, b) gives CLS a SEP b SEP with type ids 0/1 ([CLS]/<s>)."""
  ids = SpecialIds.of(tok)
  cls_token, sep_token = tok.id_to_token(ids.cls), tok.id_to_token(ids.sep)
  out = owned(tokenizers.Tokenizer.from_str(tok.to_str()))
  out.post_processor = processors.TemplateProcessing(
      single=f"{cls_token}:0 $A:0 {sep_token}:0",
      pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
      special_tokens=[(cls_token, ids.cls), (sep_token, ids.sep)])
  return out


def train_wordpiece(texts, vocab_size: int) -> tokenizers.Tokenizer:
  """Trains BERT WordPiece on `texts` (see `wordpiece_from_counts`)."""
  return train("encoder", [texts], vocab_size)


def train_byte_bpe(texts, vocab_size: int) -> tokenizers.Tokenizer:
  """Trains GPT-2 byte-level BPE on `texts` (see `byte_bpe_from_counts`)."""
  return train("decoder", [texts], vocab_size)


def train(kind: str, text_batches, vocab_size: int) -> tokenizers.Tokenizer:
  """The tokenizer a `kind` model trains with, learned from an iterable of lists of texts.

  Only word counts are kept between batches (a word is split the same way in any batch), so any
  batching of the same texts gives the same tokenizer, and a corpus larger than memory can be
  streamed through.
  """
  counts = collections.Counter()
  if kind == "encoder":
    tok = bert_wordpiece({})
    for texts in text_batches:
      counts.update(bpe.bert_word_counts(texts, tok.normalizer, tok.pre_tokenizer))
    return owned(wordpiece_from_counts(counts, vocab_size))
  for texts in text_batches:
    counts.update(bpe.byte_level_word_counts(texts))
  return owned(byte_bpe_from_counts(counts, vocab_size))


def wordpiece_from_counts(counts: dict, vocab_size: int) -> tokenizers.Tokenizer:
  """BERT WordPiece from {word: count}: specials, then the pieces by (length, text).

  The pieces are what BPE merges with a '##' prefix on word-inner pieces make (as the
  `tokenizers` WordPiece trainer finds them), from every character and word-inner character.
  """
  chars = sorted({c for word in counts for c in word})
  inner = sorted({c for word in counts for c in word[1:]})
  vocab, _ = bpe.learn(counts, chars + ["##" + c for c in inner], vocab_size, BERT_SPECIALS, "##")
  pieces = sorted((t for t in vocab if t not in BERT_SPECIALS),
                  key=lambda t: (len(t.removeprefix("##")), t))
  return bert_wordpiece({t: i for i, t in enumerate(list(BERT_SPECIALS) + pieces)})


def byte_bpe_from_counts(counts: dict, vocab_size: int) -> tokenizers.Tokenizer:
  """GPT-2 byte-level BPE from {word: count}: <|endoftext|> (id 0), the 256 byte characters,
  then merges."""
  vocab, merges = bpe.learn(counts, sorted(pre_tokenizers.ByteLevel.alphabet()), vocab_size,
                            (GPT_EOS,))
  tok = tokenizers.Tokenizer(models.BPE(vocab, merges))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([GPT_EOS])
  return tok


def owned(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """`tok` with its own padding and truncation switched off (the module doc says why)."""
  tok.no_padding()
  tok.no_truncation()
  return tok


def load(path: str) -> tokenizers.Tokenizer:
  """Loads a tokenizer file or directory, giving the ids transformers' fast tokenizer gives.

  `path`: a tokenizer.json; a WordPiece vocab.txt; or a directory holding tokenizer.json, else
  vocab.txt (BERT; `do_lower_case` from tokenizer_config.json), else vocab.json + merges.txt
  (GPT-2 byte-level BPE; RoBERTa's <s> A </s> when the vocabulary has <s> and </s>). Its own
  padding and truncation are off (`owned`).
  """
  return owned(_read(path))


def _read(path: str) -> tokenizers.Tokenizer:
  if os.path.isdir(path):
    for name in ("tokenizer.json", "vocab.txt"):
      if os.path.exists(os.path.join(path, name)):
        return _read(os.path.join(path, name))
    vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if os.path.exists(vocab) and os.path.exists(merges):
      with open(vocab, encoding="utf-8") as f:
        tokens = json.load(f)
      return byte_level_bpe(vocab, merges, roberta="<s>" in tokens and "</s>" in tokens)
    raise UserError(f"no tokenizer.json, vocab.txt or vocab.json + merges.txt in {path!r}")
  if not os.path.isfile(path):
    raise UserError(f"data.tokenizer: no such file {path!r}")
  if path.endswith(".json"):
    return from_file(path)
  if path.endswith(".txt"):
    try:
      with open(path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    except UnicodeDecodeError:
      raise UserError(f"{path!r} is not a vocab.txt (not UTF-8 text)") from None
    settings = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    lowercase = True
    if os.path.exists(settings):
      with open(settings) as f:
        lowercase = json.load(f).get("do_lower_case", True)
    return bert_wordpiece(vocab, lowercase=lowercase, post_process="[CLS]" in vocab)
  raise UserError(f"data.tokenizer must be a tokenizer.json, a vocab.txt or a directory, got {path!r}")


def from_file(path: str) -> tokenizers.Tokenizer:
  """A tokenizer.json, its own padding and truncation off (`owned`); a file `tokenizers` cannot
  read fails in one line naming it."""
  try:
    return owned(tokenizers.Tokenizer.from_file(path))
  except Exception as e:  # pylint: disable=broad-except  (`tokenizers` raises plain Exception)
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{path!r} is not a tokenizer.json the `tokenizers` library can read "
                    f"({reason})") from None


def get_tokenizer(data_cfg, kind: str, train_text_batches, workdir: str,
                  cache=None) -> tokenizers.Tokenizer:
  """The configured tokenizer, else the workdir's saved one, else one trained (`train`) on
  `train_text_batches`, an iterable of lists of texts, read only when training. With `cache` (a
  research.data.cache.DataCache; the batches are then lists, read twice), a tokenizer trained on
  the same texts before is read from it instead."""
  if data_cfg.tokenizer:
    tok = load(data_cfg.tokenizer)
  else:
    saved = os.path.join(workdir, "tokenizer.json")
    if os.path.exists(saved):
      return from_file(saved)
    tok = (train(kind, train_text_batches, data_cfg.vocab_size) if cache is None else
           cache.tokenizer(kind, train_text_batches, data_cfg.vocab_size, train))
  ids = SpecialIds.of(tok)
  needed = ("cls", "sep", "mask") if kind == "encoder" else ("eos",)
  missing = [SPECIAL_NAMES[r][0] for r in needed if getattr(ids, r) < 0]
  if missing:
    raise UserError(f"the tokenizer lacks the special tokens {missing} a {kind} needs")
  return tok


def token_ids(tok: tokenizers.Tokenizer, texts) -> list:
  """Each text's token ids as an int32 array, no special tokens (what rows are made of)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return [np.asarray(e.ids, np.int32) for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def save(tok: tokenizers.Tokenizer, workdir: str):
  """Writes WORKDIR/tokenizer.json atomically (write, then rename)."""
  path = os.path.join(workdir, "tokenizer.json")
  tok.save(path + ".tmp")
  os.replace(path + ".tmp", path)
