"""Parameter-efficient fine-tuning: a few new or chosen parameters trained, the rest frozen.

  config.py   `PeftConfig` (the `peft` section), the methods, what each trains and targets
  lora.py     LoRA: the low-rank update inside every targeted projection; merge and unmerge
  ia3.py      IA3: learned rescaling of targeted projections' outputs (or inputs); merge
  adapter.py  bottleneck adapters after each block's attention and MLP
  prefix.py   prefix tuning: learned per-layer key/value prefixes (optionally from an MLP)
  prompt.py   prompt tuning: learned soft-prompt embeddings in front of the tokens
  targets.py  what a method can act on in a model; one-line errors before a run writes
  feature.py  `Peft`: the method as a training feature (research/train/feature.py)

The model builds a method's parameters from `ModelConfig.peft`; the `Peft` feature names what is
trained, so the optimizer freezes the rest and the train step differentiates only what is
trained; AdaLoRA adds its rank budget to the optimizer, its regulariser and its rank report.
"""
