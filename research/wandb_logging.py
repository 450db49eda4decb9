r"""Weights & Biases logging of a training run: optional, off unless `config.logging.wandb.mode`.

  python -m research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir=/tmp/ft \
      --config.logging.wandb.mode=offline --config.logging.wandb.project=bbc
  wandb sync /tmp/ft/wandb/offline-run-*        # later, to upload an offline run

`config.logging.wandb` (`section()`, in every config):
  mode      'disabled' (the default: wandb is not imported, nothing is written), 'offline' (kept
            under DIR/wandb/offline-run-*, uploaded later with `wandb sync`), or 'online'
            (streamed to the W&B server: needs `wandb login` or WANDB_API_KEY)
  project   the W&B project ('': W&B's default)
  entity    the W&B user or team ('': your default entity)
  name      the run's display name ('': the workdir's basename)
  tags      a tuple of tags, e.g. --config.logging.wandb.tags="('lora','bbc')"
  dir       where W&B keeps its local files ('': the workdir)
Any mode but 'disabled' needs the `wandb` package (`pip install -e ".[wandb]"` or `pip install
wandb`); without it the run is refused before it writes anything (research/validation.py).

`Tracker` (research/tracking.py) drives a `WandbRun` from process 0 only. Logged: the config
(flattened, e.g. 'optim.learning_rate'), every metrics.jsonl record at its step (missing and
non-finite values left out), the final summary (`run.summary`: summary.json's values) and the
loss plot (loss.png, as the summary image 'plots/loss'). A run stopped by a preemption or a
divergence closes its W&B run with its exit code (3, marked as preempting; 4).

Resume: WORKDIR/wandb_run.json keeps the W&B run's id and the last step logged to it. A resumed
run continues that W&B run (`resume="allow"`) and logs only the steps after that one, so no step
is logged twice: the steps an interrupted run logged after its last checkpoint keep the values
it logged (a resumed run recomputes the same ones: research/train resumes exactly). A run that
turns W&B on when it resumes first logs the history metrics.jsonl keeps.
"""
import json
import os

import ml_collections

from research.checkpoint import flat_config
from research.errors import Preempted, RunStopped, UserError

MODES = ("disabled", "offline", "online")
RUN_FILE = "wandb_run.json"  # {"id": the W&B run's id, "step": the last step logged to it}
PLOT_KEY = "plots/loss"  # the summary image of loss.png


def section() -> ml_collections.ConfigDict:
  """`config.logging.wandb`: off by default."""
  return ml_collections.ConfigDict(dict(mode="disabled", project="", entity="", name="",
                                        tags=(), dir=""))


def installed() -> bool:
  try:
    import wandb  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class WandbRun:
  """The W&B run of a workdir: logs records after its last logged step, then a summary."""

  def __init__(self, run, path: str, step: int):
    self.run, self.path, self.step = run, path, step

  @classmethod
  def open(cls, settings, workdir: str, config, history: list[dict]) -> "WandbRun":
    """Starts (or, with WORKDIR/wandb_run.json, resumes) the W&B run of `workdir`, logs
    `config` flattened and the records of `history` not logged yet."""
    import wandb  # pylint: disable=g-import-not-at-top
    path = os.path.join(workdir, RUN_FILE)
    saved = {"id": None, "step": 0}
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
    directory = settings.dir or workdir
    os.makedirs(directory, exist_ok=True)
    try:
      run = wandb.init(
          mode=settings.mode, project=settings.project or None, entity=settings.entity or None,
          name=settings.name or os.path.basename(os.path.abspath(workdir)),
          tags=list(settings.tags) or None, dir=directory, id=saved["id"], resume="allow",
          settings=wandb.Settings(console="off"))  # our stderr stays ours (one-line errors)
    except wandb.errors.Error as e:  # online without credentials, an unknown entity, ...
      raise UserError(f"logging.wandb: W&B could not start the run: {e}") from None
    run.config.update(flat_config(json.loads(config.to_json_best_effort())),
                      allow_val_change=True)  # a resumed run may change logging.*, train.steps
    opened = cls(run, path, saved["step"])
    opened.save()
    for record in history:
      opened.log(record)
    return opened

  def save(self):
    with open(self.path + ".tmp", "w") as f:
      json.dump({"id": self.run.id, "step": self.step}, f)
    os.replace(self.path + ".tmp", self.path)

  def log(self, record: dict):
    """Logs a metrics.jsonl record at its step, unless that step was logged already."""
    if record["step"] <= self.step:
      return
    self.run.log({k: v for k, v in record.items() if k != "step" and v is not None},
                 step=record["step"])
    self.step = record["step"]
    self.save()

  def finish(self, summary: dict, plot_path: str):
    """The run's summary and loss plot, then the run is closed."""
    import wandb  # pylint: disable=g-import-not-at-top
    self.run.summary.update({k: v for k, v in summary.items() if v is not None})
    if os.path.exists(plot_path):
      self.run.summary[PLOT_KEY] = wandb.Image(plot_path)
    self.run.finish()

  def close(self, stop: RunStopped | None = None):
    """Closes the run; `stop` (a preemption or a divergence) gives its exit code."""
    if isinstance(stop, Preempted):
      self.run.mark_preempting()
    self.run.finish(exit_code=stop.exit_code if stop else 0)
