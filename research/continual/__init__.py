"""Continual learning: a sequence of tasks in one run, with forgetting measured.

`configs/continual.py` lists the stages (`config.continual`, research/continual/settings.py);
`run(config, workdir)` (runner.py) trains them one after another, each stage a training run of
its own (stages.py builds its task set), and writes the accuracy matrix and what it shows
(matrix.py). The remedies: EWC and L2-SP (penalty.py, loss terms of the parameters), experience
replay (replay.py) and a LoRA per task (research/peft over a frozen base).
"""


def run(config, workdir: str) -> dict:
  """`research.continual.runner.run`: the stages in turn, in `workdir`; returns the summary."""
  from research.continual.runner import run as runner_run  # pylint: disable=g-import-not-at-top
  return runner_run(config, workdir)


__all__ = ["run"]
