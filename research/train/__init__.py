"""Training: the one loop (`trainer.run`), its steps (`step`) and optimizer (`optim`).

`run` is imported lazily so that `research.train.step` and `research.train.optim` (used by the
benchmark harness) load without the data stack (grain, datasets).
"""


def run(config, workdir: str) -> dict:
  """`research.train.trainer.run`: train as `config` says in `workdir`; returns the summary."""
  from research.train.trainer import run as trainer_run  # pylint: disable=g-import-not-at-top
  return trainer_run(config, workdir)


__all__ = ["run"]
