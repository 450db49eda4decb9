"""The unigram-frequency baseline shared by the token-prediction objectives."""


def unigram_hits(batch, labels, weights):
  """How many weighted labels equal the most frequent training token (batch['unigram_top'])."""
  return ((labels == batch["unigram_top"][:, None]) * weights).sum()
