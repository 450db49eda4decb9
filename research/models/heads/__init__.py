"""Heads map the backbone's outputs to logits; each adds its own keys to the output dict.

`build(spec, cfg, token_embed)` returns the head a `HeadSpec` (an entry of `ModelConfig.heads`)
describes; its outputs are keyed by the spec's name ('<name>_logits', ...). Fine-tuning adds
heads here; the backbone code never changes.
"""
from research.models.heads.causal_lm import CausalLmHead
from research.models.heads.classification import ClassificationHead
from research.models.heads.masked_lm import MaskedLmHead
from research.models.heads.sentence_pair import SentencePairHead
from research.models.heads.span import SpanHead
from research.models.heads.token_classification import TokenClassificationHead

_HEADS = {"mlm": MaskedLmHead, "lm": CausalLmHead, "sentence_pair": SentencePairHead,
          "classification": ClassificationHead, "token_classification": TokenClassificationHead,
          "span": SpanHead}


def build(spec, cfg, token_embed):
  head = _HEADS[spec.kind]
  if head.uses_token_embedding:
    return head(cfg, spec.name, token_embed)
  return head(cfg, spec.name, spec.num_labels)
