"""Parameter-efficient fine-tuning: a few new or chosen parameters trained, the rest frozen.

  config.py   `PeftConfig` (the `peft` section), the methods, what each trains and targets
  lora.py     LoRA: the low-rank update inside every targeted projection; merge and unmerge
  targets.py  what a method can act on in a model; one-line errors before a run writes

The model builds a method's parameters from `ModelConfig.peft`; the optimizer freezes the rest
through `optim.trainable_predicate`, and the train step differentiates only what is trained.
"""
