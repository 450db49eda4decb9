"""Tokenizers (HF `tokenizers`): train one on the corpus, or load `tokenizer.json` / `vocab.txt`.

Encoders get a BERT WordPiece tokenizer (lower-cased, [PAD] [UNK] [CLS] [SEP] [MASK]); decoders a
GPT-2 byte-level BPE tokenizer (<|endoftext|>). A trained tokenizer is saved as
WORKDIR/tokenizer.json and reused when the run resumes.
"""
import dataclasses
import os

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from research.errors import UserError

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT_EOS = "<|endoftext|>"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the special tokens an objective needs; -1 where the tokenizer has none."""
  pad: int
  cls: int
  sep: int
  mask: int
  eos: int
  first_regular: int  # smallest id that is not a special token (random MLM replacements)

  @classmethod
  def of(cls, tok: tokenizers.Tokenizer) -> "SpecialIds":
    get = lambda t: -1 if tok.token_to_id(t) is None else tok.token_to_id(t)
    special = [get(t) for t in BERT_SPECIALS + (GPT_EOS,) if get(t) >= 0]
    return cls(pad=max(get("[PAD]"), 0), cls=get("[CLS]"), sep=get("[SEP]"), mask=get("[MASK]"),
               eos=get(GPT_EOS), first_regular=max(special) + 1 if special else 0)


def bert_wordpiece(vocab: dict) -> tokenizers.Tokenizer:
  """BERT's lower-cased WordPiece pipeline over a {token: id} vocabulary."""
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  return tok


def train_wordpiece(texts, vocab_size: int) -> tokenizers.Tokenizer:
  """Trains BERT WordPiece; ids are made deterministic.

  The `tokenizers` trainer finds the same vocabulary every time but numbers it differently from
  run to run (hash-map order). WordPiece only uses the set of pieces, so we renumber them in a
  fixed order: specials first, then by (length, text).
  """
  tok = bert_wordpiece({})
  tok.train_from_iterator(texts, trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS), show_progress=False))
  pieces = sorted((t for t in tok.get_vocab() if t not in BERT_SPECIALS),
                  key=lambda t: (len(t.removeprefix("##")), t))
  return bert_wordpiece({t: i for i, t in enumerate(list(BERT_SPECIALS) + pieces)})


def train_byte_bpe(texts, vocab_size: int) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[GPT_EOS], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tok


def load(path: str) -> tokenizers.Tokenizer:
  """Loads a `tokenizer.json`, or a WordPiece `vocab.txt` (BERT's lower-cased pipeline)."""
  if not os.path.isfile(path):
    raise UserError(f"data.tokenizer: no such file {path!r}")
  if path.endswith(".json"):
    return tokenizers.Tokenizer.from_file(path)
  if path.endswith(".txt"):
    with open(path, encoding="utf-8") as f:
      return bert_wordpiece({line.rstrip("\n"): i for i, line in enumerate(f)})
  raise UserError(f"data.tokenizer must be a tokenizer.json or vocab.txt, got {path!r}")


def get_tokenizer(data_cfg, kind: str, train_texts, workdir: str) -> tokenizers.Tokenizer:
  """The configured tokenizer, else the workdir's saved one, else one trained on `train_texts`."""
  if data_cfg.tokenizer:
    tok = load(data_cfg.tokenizer)
  else:
    saved = os.path.join(workdir, "tokenizer.json")
    if os.path.exists(saved):
      return tokenizers.Tokenizer.from_file(saved)
    train = train_wordpiece if kind == "encoder" else train_byte_bpe
    tok = train(train_texts, data_cfg.vocab_size)
  needed = ("[CLS]", "[SEP]", "[MASK]", "[PAD]") if kind == "encoder" else (GPT_EOS,)
  missing = [t for t in needed if tok.token_to_id(t) is None]
  if missing:
    raise UserError(f"the tokenizer lacks the special tokens {missing} a {kind} needs")
  return tok


def save(tok: tokenizers.Tokenizer, workdir: str):
  """Writes WORKDIR/tokenizer.json atomically (write, then rename)."""
  path = os.path.join(workdir, "tokenizer.json")
  tok.save(path + ".tmp")
  os.replace(path + ".tmp", path)
