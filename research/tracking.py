"""Experiment tracking: metrics.jsonl, TensorBoard, a progress bar, summaries, a loss plot.

Only process 0 writes. On resume, records past the resumed step (written by the interrupted run
after its last checkpoint) are dropped, so metrics.jsonl holds each step once. A value that is
missing or not finite is written as null and shown as such; it never stops the run.

summary.json is the summary of the run that trained the weights in the workdir: an invocation
that trains no step (a rerun of a finished run) leaves it as it is. summaries.jsonl gets one line
per invocation that finished or stopped (`outcome`: finished, preempted, diverged), with the step
it started from and the time it ended, so each invocation's figures are kept.

With `config.logging.wandb.mode` other than 'disabled', the same records, the config, the summary
and the loss plot also go to Weights & Biases (research/wandb_logging.py).
"""
import datetime
import json
import math
import os
import sys

import jax
import tqdm

from research import wandb_logging

METRICS_FILE, SUMMARY_FILE, SUMMARIES_FILE, PLOT_FILE = (
    "metrics.jsonl", "summary.json", "summaries.jsonl", "loss.png")


def read_jsonl(workdir: str, name: str) -> list[dict]:
  """The records of the workdir's JSON Lines file `name` (none if it does not exist)."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_metrics(workdir: str) -> list[dict]:
  return read_jsonl(workdir, METRICS_FILE)


def _json_value(v):
  """A finite float, or None (missing, NaN, inf: JSON has no NaN)."""
  if v is None:
    return None
  v = float(v)
  return None if math.isnan(v) or math.isinf(v) else v


def _shown(v, spec: str) -> str:
  return "null" if v is None else format(v, spec)


def append_summary(workdir: str, outcome: str, start_step: int, summary: dict):
  """One line of summaries.jsonl: this invocation's `summary`, how it ended, where it started."""
  if jax.process_index() != 0:
    return
  line = {"outcome": outcome, "start_step": start_step,
          "ended": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          **summary}
  with open(os.path.join(workdir, SUMMARIES_FILE), "a") as f:
    f.write(json.dumps(line, sort_keys=True) + "\n")


def read_summaries(workdir: str) -> list[dict]:
  return read_jsonl(workdir, SUMMARIES_FILE)


class Tracker:
  """Where a run's records go. `config`: the run's config, whose `logging.wandb` section turns on
  Weights & Biases (None: off)."""

  def __init__(self, workdir: str, *, start_step: int, total_steps: int, tensorboard: bool = True,
               progress: bool = True, config=None):
    self.workdir, self.start_step = workdir, start_step
    self.is_writer = jax.process_index() == 0
    self.history = [r for r in read_metrics(workdir) if r["step"] <= start_step]
    self.tb = self.bar = self.wandb = None
    if not self.is_writer:
      return
    self._rewrite()  # drop what the interrupted run logged after its last checkpoint
    self.file = open(os.path.join(workdir, METRICS_FILE), "a")
    if tensorboard:
      self.tb = tensorboard_writer(os.path.join(workdir, "tensorboard"))
    if progress:
      self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                           desc="train")
    if config is not None and config.logging.wandb.mode != "disabled":
      self.wandb = wandb_logging.WandbRun.open(config.logging.wandb, workdir, config, self.history)

  def _rewrite(self):
    path = os.path.join(self.workdir, METRICS_FILE)
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in self.history)
    os.replace(path + ".tmp", path)

  def write(self, step: int, metrics: dict):
    record = {"step": int(step), **{k: _json_value(v) for k, v in sorted(metrics.items())}}
    self.history.append(record)
    if not self.is_writer:
      return
    self.file.write(json.dumps(record) + "\n")
    self.file.flush()
    if self.tb:
      for k, v in record.items():
        if k != "step" and v is not None:
          self.tb.add_scalar(k, v, step)
    if self.bar and "train/loss" in record:
      self.bar.set_postfix(loss=_shown(record["train/loss"], ".3f"),
                           tok_s=_shown(record.get("perf/tokens_per_sec"), ".0f"))
    if self.wandb:
      self.wandb.log(record)

  def advance(self, steps: int):
    if self.bar:
      self.bar.update(steps)

  def latest(self, prefix: str) -> dict:
    """The last logged value of every metric whose name starts with `prefix`."""
    out = {}
    for record in self.history:
      out.update({k: v for k, v in record.items() if k.startswith(prefix)})
    return out

  def _close_files(self):
    if self.file.closed:
      return
    if self.bar:
      self.bar.close()
    self.file.close()
    if self.tb:
      self.tb.close()

  def close(self, stop=None):
    """Ends the progress bar, closes the files and the W&B run (again: a no-op). `stop`: the
    `RunStopped` (preemption, divergence) that ended the run, if one did."""
    if not self.is_writer:
      return
    self._close_files()
    if self.wandb:
      self.wandb.close(stop)
      self.wandb = None

  def finish(self, summary: dict):
    """Closes; writes summary.json if this invocation trained, appends to summaries.jsonl, plots
    the losses; the W&B run gets the summary and the plot."""
    if not self.is_writer:
      return
    self._close_files()
    path = os.path.join(self.workdir, SUMMARY_FILE)
    if summary["step"] > self.start_step or not os.path.exists(path):
      with open(path, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    append_summary(self.workdir, "finished", self.start_step, summary)
    plot_path = os.path.join(self.workdir, PLOT_FILE)
    plot_losses(self.history, plot_path)
    if self.wandb:
      self.wandb.finish(summary, plot_path)
      self.wandb = None


def tensorboard_writer(directory: str):
  """tensorboardX's `SummaryWriter` into `directory`, tensorboardX imported without torch.

  Where torch is installed, tensorboardX imports it (about 2.5 s of every run's start-up on 2
  CPU cores) only so that its writer accepts torch tensors, which we never log: the import is
  made to fail for the moment tensorboardX is imported (it falls back to numpy), and works as
  usual afterwards. A process that imported torch already is left as it is."""
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    if block:
      del sys.modules["torch"]
  return tensorboardX.SummaryWriter(directory)


def plot_losses(history: list[dict], path: str):
  """Train loss and every eval loss against step, in one PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = sorted({k for r in history for k in r if k == "train/loss" or
                 (k.startswith("eval/") and k.endswith("/loss"))})
  fig, ax = plt.subplots(figsize=(7, 4))
  for k in keys:
    points = [(r["step"], r[k]) for r in history if r.get(k) is not None]
    if points:
      ax.plot(*zip(*points), marker="o" if k.startswith("eval/") else None, label=k)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.grid(alpha=0.3)
  if keys:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
