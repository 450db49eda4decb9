"""research: pretrain, fine-tune, evaluate and compress Transformer models with JAX and Flax."""
from research import platforms as _platforms

_platforms.cpu_where_nothing_else()  # before anything imports jax
