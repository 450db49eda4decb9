"""Training: the one loop (`trainer.run`), its steps (`step`) and optimizer (`optim`), and the
interface of training features (`feature`).

`run` is the loop with every registered training feature (research/features.py): the trainer's
modules import no feature; this is where the two meet. It is imported lazily so that
`research.train.step` and `research.train.optim` (used by the benchmark harness) load without the
data stack (grain, datasets).
"""


def run(config, workdir: str) -> dict:
  """`research.train.trainer.run` with the registered features: train as `config` says in
  `workdir`; returns the summary."""
  from research.features import REGISTRY  # pylint: disable=g-import-not-at-top
  from research.train.trainer import run as trainer_run  # pylint: disable=g-import-not-at-top
  return trainer_run(config, workdir, REGISTRY)


__all__ = ["run"]
