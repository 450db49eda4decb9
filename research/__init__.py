"""research: pretrain, fine-tune, evaluate and compress Transformer models with JAX and Flax."""
