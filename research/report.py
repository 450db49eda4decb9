r"""Compare training runs: their final metrics, how their configs differ, their curves overlaid.

  python -m research.report WORKDIR [WORKDIR ...] [--out=DIR] [--metrics=REGEX[,REGEX...]]

Reads each WORKDIR's metrics.jsonl, summary.json and config.json (pretraining and fine-tuning
runs alike, and a continual run's stage folders, WORKDIR/stages/*) and
  prints  the final metrics, a row per run: step, train/loss (the last one logged), tokens/s
          (the mean of the logged perf/tokens_per_sec), and every eval/ and test/ metric of
          summary.json ('n/a' where a run lacks one, e.g. a stopped run has no summary.json);
          then the config keys whose values differ between the runs (dotted, as on the command
          line: optim.learning_rate), with each run's value ('(absent)' where a run's config
          has no such key)
  writes  OUT/curves.png   a panel per metric against step, a line per run: train/loss, then
                           each eval/ metric of metrics.jsonl
          OUT/report.md    both tables, in Markdown
          OUT/final_metrics.csv   the final metrics (full precision; missing values empty)
A run is named by its workdir's basename, with as many parent folders as make the names differ.

Flags:
  --out      the folder for the three files (created if needed; default: the current directory)
  --metrics  comma-separated regexes: only the metrics whose names match one of them (re.search)
             become table columns and panels, e.g. --metrics='loss$,accuracy' (default: all);
             step and tokens/s are always shown
  --verbose  show the traceback of a bad-input error instead of one line

`load_runs`, `final_metrics`, `config_diff` and `curves_figure` are importable (tests, notebooks).
"""
import csv
import dataclasses
import json
import math
import os
import re

from absl import app, flags

from research import tracking
from research.checkpoint import flat_config
from research.errors import UserError, one_line_errors

FLAGS = flags.FLAGS
CURVES_FILE, MARKDOWN_FILE, CSV_FILE = "curves.png", "report.md", "final_metrics.csv"
FIXED_COLUMNS = ("step", "tokens/s")  # shown whatever --metrics says
TRAIN_LOSS = "train/loss"
MISSING, ABSENT = "n/a", "(absent)"


def define_flags():
  """The command's flags, defined only when it runs (importing this module defines none)."""
  flags.DEFINE_string("out", ".", "Folder for curves.png, report.md and final_metrics.csv.")
  flags.DEFINE_list("metrics", [], "Comma-separated regexes: only the metrics whose names match "
                    "one become table columns and panels (default: all).")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")


@dataclasses.dataclass
class Run:
  label: str  # how tables and legends name it
  workdir: str
  history: list[dict]  # metrics.jsonl's records
  summary: dict  # summary.json ({} without one)
  config: dict  # config.json, flattened: {'optim.learning_rate': ...} ({} without one)


def labels(workdirs: list[str]) -> list[str]:
  """The workdirs' basenames, with parent folders added until no two are the same."""
  parts = [os.path.abspath(w).rstrip(os.sep).split(os.sep) for w in workdirs]
  for depth in range(1, max(map(len, parts)) + 1):
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  raise UserError(f"a workdir is given twice: {workdirs}")


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_runs(workdirs: list[str]) -> list[Run]:
  """Each workdir's records, summary and config; a path that holds no run is a `UserError`."""
  if not workdirs:
    raise UserError("pass one or more workdirs: python -m research.report WORKDIR [WORKDIR ...]")
  for w in workdirs:
    if not os.path.isdir(w):
      raise UserError(f"no such workdir {w!r}")
    if not os.path.exists(os.path.join(w, tracking.METRICS_FILE)):
      raise UserError(f"{w!r} has no {tracking.METRICS_FILE}: not the workdir of a training run")
  return [Run(label, w, tracking.read_metrics(w),
              _read_json(os.path.join(w, tracking.SUMMARY_FILE)),
              flat_config(_read_json(os.path.join(w, "config.json"))))
          for label, w in zip(labels(workdirs), workdirs)]


def _selected(name: str, patterns: list[str]) -> bool:
  return not patterns or any(re.search(p, name) for p in patterns)


def _last(history: list[dict], key: str):
  values = [r[key] for r in history if r.get(key) is not None]
  return values[-1] if values else None


def _mean(history: list[dict], key: str):
  values = [r[key] for r in history if r.get(key) is not None]
  return sum(values) / len(values) if values else None


def metric_columns(runs: list[Run], patterns: list[str]) -> list[str]:
  """train/loss and every final eval/ and test/ metric of the runs' summaries, as selected."""
  held_out = sorted({k for r in runs for k in r.summary if k.startswith(("eval/", "test/"))})
  return [k for k in [TRAIN_LOSS] + held_out if _selected(k, patterns)]


def final_metrics(runs: list[Run], patterns: list[str]) -> tuple[list[str], list[dict]]:
  """(columns, a row per run): step, tokens/s, then `metric_columns`; None where missing."""
  metrics = metric_columns(runs, patterns)
  rows = []
  for r in runs:
    step = r.summary.get("step", r.history[-1]["step"] if r.history else None)
    row = {"step": step, "tokens/s": _mean(r.history, "perf/tokens_per_sec")}
    for k in metrics:
      row[k] = _last(r.history, k) if k == TRAIN_LOSS else r.summary.get(k)
    rows.append(row)
  return list(FIXED_COLUMNS) + metrics, rows


def config_diff(runs: list[Run]) -> list[tuple[str, list]]:
  """(key, each run's value or `ABSENT`) for every config key whose values differ."""
  keys = sorted({k for r in runs for k in r.config})
  diff = []
  for k in keys:
    values = [r.config.get(k, ABSENT) for r in runs]
    if any(v != values[0] for v in values[1:]):
      diff.append((k, values))
  return diff


def curve_keys(runs: list[Run], patterns: list[str]) -> list[str]:
  """The panels: train/loss, then every eval/ metric the runs logged, as selected."""
  logged = {k for r in runs for record in r.history for k in record}
  evals = sorted(k for k in logged if k.startswith("eval/"))
  return [k for k in ([TRAIN_LOSS] if TRAIN_LOSS in logged else []) + evals
          if _selected(k, patterns)]


def curves_figure(runs: list[Run], patterns: list[str]):
  """A matplotlib figure: a panel per `curve_keys` metric against step, a line per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  keys = curve_keys(runs, patterns)
  cols = max(1, min(3, len(keys)))
  rows = max(1, math.ceil(len(keys) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    for r in runs:
      points = [(rec["step"], rec[key]) for rec in r.history if rec.get(key) is not None]
      if points:
        ax.plot(*zip(*points), marker="o" if len(points) <= 20 else None, markersize=4,
                label=r.label)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key.rsplit("/", 1)[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in list(axes.flat)[len(keys):]:
    ax.set_visible(False)
  fig.suptitle("train and eval curves: " + ", ".join(r.label for r in runs))
  fig.tight_layout()
  return fig


def _shown(v) -> str:
  if v is None:
    return MISSING
  if isinstance(v, float):
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4f}"
  return str(v)


def _config_value(v, width: int = 60) -> str:
  """As on the command line (1e-05, True, ['a', 'b'], text unquoted), cut to `width`."""
  text = v if isinstance(v, str) else repr(v)
  return text if len(text) <= width else text[:width - 3] + "..."


def markdown_table(header: list[str], rows: list[list]) -> str:
  cells = [header] + [[_shown(v) for v in row] for row in rows]
  widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
  line = lambda c: "| " + " | ".join(str(x).ljust(w) for x, w in zip(c, widths)) + " |"
  return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                   [line(c) for c in cells[1:]])


def report(workdirs: list[str], out: str, patterns: list[str]) -> str:
  """Writes OUT's three files; returns the text the command prints."""
  for p in patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise UserError(f"--metrics: bad regex {p!r}: {e}") from None
  runs = load_runs(workdirs)
  columns, rows = final_metrics(runs, patterns)
  panels = curve_keys(runs, patterns)
  if patterns and len(columns) == len(FIXED_COLUMNS) and not panels:
    known = sorted(set(metric_columns(runs, [])) | set(curve_keys(runs, [])))
    raise UserError(f"--metrics={','.join(patterns)} matches no metric of these runs; "
                    f"known: {', '.join(known)}")
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out={out!r} is a file, not a folder")
  diff = config_diff(runs)
  metrics_md = markdown_table(["run"] + columns, [[r.label] + [row[c] for c in columns]
                                                  for r, row in zip(runs, rows)])
  diff_md = (markdown_table(["config key"] + [r.label for r in runs],
                            [[k] + [_config_value(v) for v in values] for k, values in diff])
             if diff else "The configs are the same.")
  text = f"## Final metrics\n\n{metrics_md}\n\n## Config differences\n\n{diff_md}\n"
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, MARKDOWN_FILE), "w") as f:
    f.write(text + f"\n## Curves\n\n![curves]({CURVES_FILE})\n")
  with open(os.path.join(out, CSV_FILE), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["run"] + columns)
    writer.writerows([r.label] + ["" if row[c] is None else row[c] for c in columns]
                     for r, row in zip(runs, rows))
  fig = curves_figure(runs, patterns)
  fig.savefig(os.path.join(out, CURVES_FILE), dpi=100)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)
  written = ", ".join(os.path.join(out, name) for name in (CURVES_FILE, MARKDOWN_FILE, CSV_FILE))
  return f"{text}\nwrote {written}"


def main(argv):
  with one_line_errors(FLAGS.verbose):
    print(report(argv[1:], FLAGS.out, FLAGS.metrics))


if __name__ == "__main__":
  define_flags()
  app.run(main)
