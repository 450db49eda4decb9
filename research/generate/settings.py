"""How to decode: `Settings` (strategy, budget, sampling knobs, beam width) and its checks."""
import dataclasses

from research.errors import UserError

STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class Settings:
  """One decoding configuration; the same settings and seed give the same tokens.

  strategy: 'greedy' (argmax), 'sample' (temperature, then top-k, then top-p, as transformers
  orders its warpers) or 'beam' (`num_beams`, `length_penalty`: a finished beam scores
  sum(log p) / new_tokens ** length_penalty). `repetition_penalty` (> 1 discourages) divides
  the positive and multiplies the negative scores of every token already in the prompt or the
  output, for every strategy. Decoding stops at `max_new_tokens` or at a stop token (the
  tokenizer's end-of-text and any of `stop_tokens`).
  """
  max_new_tokens: int = 64
  strategy: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0  # 0: no top-k cut
  top_p: float = 1.0  # 1: no nucleus cut
  repetition_penalty: float = 1.0  # 1: none
  num_beams: int = 4
  length_penalty: float = 1.0
  stop_tokens: tuple = ()  # token ids that end a row, besides the tokenizer's end-of-text
  seed: int = 0

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise UserError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
    if self.max_new_tokens <= 0:
      raise UserError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.temperature <= 0.0:
      raise UserError(f"temperature must be positive (use strategy=greedy for argmax), got "
                      f"{self.temperature}")
    if self.top_k < 0:
      raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if self.repetition_penalty <= 0.0:
      raise UserError(f"repetition_penalty must be positive (1 = off), got "
                      f"{self.repetition_penalty}")
    if self.strategy == "beam" and self.num_beams < 1:
      raise UserError(f"num_beams must be >= 1, got {self.num_beams}")
    object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))

  @property
  def compiled_key(self) -> "Settings":
    """What the compiled decoding loop depends on: everything but the seed (a traced input)."""
    return dataclasses.replace(self, seed=0)
