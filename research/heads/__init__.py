"""Heads map the backbone's outputs to logits; each adds its own keys to the output dict.

`build(name, cfg, token_embed)` returns the head called `name` in `ModelConfig.heads`.
Fine-tuning adds heads here; the backbone code never changes.
"""
from research.heads.causal_lm import CausalLmHead
from research.heads.classification import ClassificationHead
from research.heads.masked_lm import MaskedLmHead
from research.heads.sentence_pair import SentencePairHead

_HEADS = {"mlm": MaskedLmHead, "lm": CausalLmHead, "sentence_pair": SentencePairHead,
          "classification": ClassificationHead}


def build(name, cfg, token_embed):
  head = _HEADS[name]
  return head(cfg, token_embed) if head.uses_token_embedding else head(cfg)
