"""Training: the one loop (`trainer.run`), its steps (`step`) and optimizer (`optim`)."""
from research.train.trainer import run

__all__ = ["run"]
