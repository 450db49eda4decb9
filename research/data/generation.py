"""Prompt -> completion examples for generative fine-tuning: template, tokens, loss mask.

A row {'prompt', 'completion'} becomes the decoder's tokens

    template(prompt) + completion + EOS

with `loss_mask` 1 on the completion's tokens and the EOS (what the model learns to write and
where to stop), 0 on the prompt's. The prompt and the completion are tokenized separately, the
prompt exactly as `research.generate` tokenizes the text it is given, so a model is trained on
the tokens it later continues from.

Templates (`template` of the task config):
  plain   the prompt as it is; the completion follows it directly (put any separator, e.g. a
          newline, in your data)
  chat    '<|user|>\\n' + prompt + '\\n<|assistant|>\\n', then the completion. The role markers
          are plain text (the tokenizer splits them like any text), not new special tokens.

An example longer than `seq_len` keeps its completion (and EOS) and loses the prompt's first
tokens (left truncation: the text nearest the completion stays); a completion of `seq_len` tokens
or more keeps its first `seq_len - 1` tokens after one prompt token (its EOS is lost).
"""
import numpy as np

from research.data.tokenizer import SpecialIds

TEMPLATES = {"plain": "{prompt}", "chat": "<|user|>\n{prompt}\n<|assistant|>\n"}


def prompt_text(template: str, prompt: str) -> str:
  """The text the model reads before the completion."""
  return TEMPLATES[template].format(prompt=prompt)


def encode(tokenizer, rows: list[dict], template: str, seq_len: int):
  """(examples, number truncated): each example {'input_ids', 'loss_mask'} of at most `seq_len`
  tokens."""
  eos = SpecialIds.of(tokenizer).eos
  prompts = tokenizer.encode_batch_fast([prompt_text(template, r["prompt"]) for r in rows],
                                        add_special_tokens=False)
  completions = tokenizer.encode_batch_fast([r["completion"] for r in rows],
                                            add_special_tokens=False)
  examples, truncated = [], 0
  for p, c in zip(prompts, completions):
    prompt, completion = list(p.ids), list(c.ids) + [eos]
    completion = completion[:seq_len - 1]
    kept = prompt[len(prompt) - min(len(prompt), seq_len - len(completion)):]
    truncated += len(kept) < len(prompt) or len(completion) < len(c.ids) + 1
    examples.append({"input_ids": np.asarray(kept + completion, np.int32),
                     "loss_mask": np.asarray([0] * len(kept) + [1] * len(completion), np.int32)})
  return examples, truncated


def generation_prompts(tokenizer, rows: list[dict], template: str, max_tokens: int) -> list[str]:
  """The text decoding starts from for each row: its templated prompt, or, when that has more
  than `max_tokens` tokens, the text of its last `max_tokens` (left truncation, as in training)."""
  texts = [prompt_text(template, r["prompt"]) for r in rows]
  encoded = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
  return [t if len(e.ids) <= max_tokens else tokenizer.decode(e.ids[-max_tokens:])
          for t, e in zip(texts, encoded)]
