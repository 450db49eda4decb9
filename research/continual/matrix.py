"""The accuracy matrix of a continual run and what is read from it, and its two plots.

R[i][j]: accuracy on task j after training stage i (0-based here, 1-based in metric names).
  average accuracy   mean_j R[T-1][j] over every task, after the last stage
  BWT                backward transfer (Lopez-Paz & Ranzato 2017): mean over j < T-1 of
                     R[T-1][j] - R[j][j]; negative = forgetting
  forgetting_j       max over i < T-1 of R[i][j] - R[T-1][j] (Chaudhry et al. 2018), j < T-1
  FWT                forward transfer, with a reference accuracy b_j per task: mean over j > 0
                     of R[j-1][j] - b_j (only when `continual.reference` gives b)
"""
import numpy as np


def summary(R: np.ndarray, names: list, reference: tuple = ()) -> dict:
  """The `continual/...` figures of a complete matrix (T x T)."""
  T = len(names)
  last = R[T - 1]
  out = {"continual/average_accuracy": float(last.mean())}
  for i in range(T):
    for j in range(T):
      out[f"continual/R/{i + 1}/{j + 1}"] = float(R[i, j])
  if T > 1:
    out["continual/bwt"] = float(np.mean([last[j] - R[j, j] for j in range(T - 1)]))
    forgetting = [float(R[:T - 1, j].max() - last[j]) for j in range(T - 1)]
    out.update({f"continual/forgetting/{names[j]}": f for j, f in enumerate(forgetting)})
    out["continual/forgetting"] = float(np.mean(forgetting))
    if reference:
      out["continual/fwt"] = float(np.mean([R[j - 1, j] - reference[j] for j in range(1, T)]))
  return out


def row_record(R: np.ndarray, stage: int) -> dict:
  """The metrics.jsonl record of the end of stage `stage` (0-based): its row of R and the
  average accuracy over the tasks seen so far."""
  record = {f"continual/R/{stage + 1}/{j + 1}": float(v) for j, v in enumerate(R[stage])}
  record["continual/stage"] = stage + 1
  record["continual/average_seen"] = float(R[stage, :stage + 1].mean())
  return record


def plot(R: np.ndarray, names: list, path_heatmap: str, path_curves: str, title: str):
  """A heatmap of R (rows: after stage i; columns: task j; upper triangle = tasks not trained
  yet, greyed) and each task's accuracy across the stages, from the stage that trained it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  T = len(names)
  done = R.shape[0]
  labels = [f"{j + 1}: {n}" for j, n in enumerate(names)]
  fig, ax = plt.subplots(figsize=(1.6 * T + 3, 1.2 * T + 2))
  ax.imshow(np.where(np.tri(done, T, dtype=bool), R, np.nan), vmin=0, vmax=1, cmap="viridis")
  for i in range(done):
    for j in range(T):
      ax.text(j, i, f"{R[i, j]:.3f}", ha="center", va="center",
              color="white" if j <= i and R[i, j] < 0.6 else "black")
  ax.set_xticks(range(T), labels, rotation=20, ha="right")
  ax.set_yticks(range(done), [f"after {i + 1}" for i in range(done)])
  ax.set_xlabel("evaluated on task")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path_heatmap, dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(7, 4))
  for j in range(min(T, done)):
    ax.plot(range(j + 1, done + 1), R[j:done, j], marker="o", label=labels[j])
  ax.set_xticks(range(1, done + 1))
  ax.set_xlabel("after stage")
  ax.set_ylabel("accuracy")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path_curves, dpi=100)
  plt.close(fig)
