"""`python -m research.report`: final metrics, config differences and overlaid curves of runs."""
import csv
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from conftest import LEARNING_RATES, REPO
from test_cli_errors import _fails_with
from research import report, tracking
from research.errors import UserError


def run_report(*args):
  return subprocess.run([sys.executable, "-m", "research.report", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def check_report(workdirs, out, stdout, labels, changed):
  """What a report of `workdirs` must show: every summary.json value in the table (printed and
  CSV), exactly the `changed` config keys, and a panel per metric whose lines are metrics.jsonl."""
  summaries = [json.load(open(os.path.join(w, tracking.SUMMARY_FILE))) for w in workdirs]
  histories = [tracking.read_metrics(w) for w in workdirs]
  with open(os.path.join(out, report.CSV_FILE)) as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == labels
  held_out = sorted({k for s in summaries for k in s if k.startswith(("eval/", "test/"))})
  assert list(rows[0]) == ["run", "step", "tokens/s", "train/loss"] + held_out
  for row, summary, history in zip(rows, summaries, histories):
    assert int(row["step"]) == summary["step"]
    losses = [r["train/loss"] for r in history if r.get("train/loss") is not None]
    assert float(row["train/loss"]) == losses[-1]
    speeds = [r["perf/tokens_per_sec"] for r in history if r.get("perf/tokens_per_sec")]
    assert float(row["tokens/s"]) == pytest.approx(sum(speeds) / len(speeds), rel=1e-12)
    for k in held_out:
      assert (float(row[k]) if row[k] else None) == summary.get(k), k
    printed = next(l for l in stdout.splitlines() if l.startswith(f"| {row['run']} "))
    cells = [c.strip() for c in printed.strip("|").split("|")]
    assert cells[4:] == [report.MISSING if summary.get(k) is None else f"{summary[k]:.4f}"
                         for k in held_out]
  diff_section = stdout.split("## Config differences")[1].split("wrote")[0]
  diff_rows = [l for l in diff_section.splitlines() if l.startswith("| ") and "config key" not in l]
  assert [[c.strip() for c in l.strip("|").split("|")] for l in diff_rows] == [
      [k, *map(str, values)] for k, values in changed]
  assert os.path.getsize(os.path.join(out, report.CURVES_FILE)) > 10_000
  with open(os.path.join(out, report.MARKDOWN_FILE)) as f:
    assert "## Config differences" in f.read()

  fig = report.curves_figure(report.load_runs(workdirs), [])
  panels = [ax for ax in fig.axes if ax.get_visible()]
  logged = sorted({k for h in histories for r in h for k in r if k.startswith("eval/")})
  assert [ax.get_title() for ax in panels] == ["train/loss"] + logged
  for ax in panels:
    key = ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    assert ax.get_xlabel() == "step"
    for line, history in zip(ax.get_lines(), histories):
      points = [(r["step"], r[key]) for r in history if r.get(key) is not None]
      assert list(zip(line.get_xdata(), line.get_ydata())) == points, key


def write_run(workdir, lr, records, summary, extra_config=None):
  """A workdir as a training run leaves it, written by the tracker itself."""
  os.makedirs(workdir)
  config = {"optim": {"learning_rate": lr, "name": "adamw"}, "train": {"steps": 3},
            **(extra_config or {})}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  tracker = tracking.Tracker(workdir, start_step=0, total_steps=3, tensorboard=False,
                             progress=False, config=ml_collections.ConfigDict(
                                 {"logging": {"wandb": {"mode": "disabled"}}}))
  for step, record in records:
    tracker.write(step, record)
  tracker.finish(summary)


def test_report_of_two_runs(tmp_path):
  # Two workdirs named alike (a/run, b/run); run b lacks a test metric and has a config key
  # that a does not.
  a, b = str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")
  write_run(a, 1e-3, [(1, {"train/loss": 2.0, "perf/tokens_per_sec": None}),
                      (2, {"train/loss": 1.5, "perf/tokens_per_sec": 100.0,
                           "eval/t/accuracy": 0.25}),
                      (3, {"train/loss": 1.25, "perf/tokens_per_sec": 200.0,
                           "eval/t/accuracy": 0.5})],
            {"step": 3, "eval/t/accuracy": 0.5, "test/t/accuracy": 0.4375})
  write_run(b, 1e-4, [(1, {"train/loss": 2.5, "perf/tokens_per_sec": None}),
                      (3, {"train/loss": 2.25, "perf/tokens_per_sec": 50.0,
                           "eval/t/accuracy": 0.125})],
            {"step": 3, "eval/t/accuracy": 0.125}, {"peft": {"method": "lora"}})
  out = tmp_path / "out"
  proc = run_report(a, b, f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  check_report([a, b], str(out), proc.stdout, ["a/run", "b/run"],
               [("optim.learning_rate", [0.001, 0.0001]),
                ("peft.method", [report.ABSENT, "lora"])])
  printed = next(l for l in proc.stdout.splitlines() if l.startswith("| b/run "))
  assert [c.strip() for c in printed.strip("|").split("|")] == [
      "b/run", "3", "50.0000", "2.2500", "0.1250", "n/a"]

  proc = run_report(a, b, f"--out={tmp_path / 'only_eval'}", "--metrics=^eval/")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "only_eval" / report.CSV_FILE) as f:
    assert next(csv.reader(f)) == ["run", "step", "tokens/s", "eval/t/accuracy"]


@pytest.mark.parametrize("args, fragments", [
    ([], ("pass one or more workdirs",)),
    (["{tmp}"], ("has no metrics.jsonl", "not the workdir of a training run")),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, fragments):
  out = tmp_path / "out"
  _fails_with(run_report(*[a.format(tmp=tmp_path) for a in args], f"--out={out}"), *fragments)
  assert not out.exists()


@pytest.mark.parametrize("workdir, metrics, message", [
    ("{tmp}/nowhere", [], "no such workdir '{tmp}/nowhere'"),
    ("{run}", ["f1"], "--metrics=f1 matches no metric of these runs; known: train/loss"),
    ("{run}", ["("], "--metrics: bad regex '('"),
])
def test_bad_workdirs_and_metrics(tmp_path, workdir, metrics, message):
  run = str(tmp_path / "run")
  write_run(run, 1e-3, [(1, {"train/loss": 2.0})], {"step": 1})
  out = tmp_path / "out"
  with pytest.raises(UserError) as e:
    report.report([workdir.format(tmp=tmp_path, run=run)], str(out), metrics)
  assert str(e.value).startswith(message.format(tmp=tmp_path))
  assert not out.exists()


@pytest.mark.slow
def test_report_of_two_finetuning_runs(finetune_lr_pair, tmp_path):
  workdirs, _ = finetune_lr_pair
  out = tmp_path / "out"
  proc = run_report(*workdirs, f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  check_report(workdirs, str(out), proc.stdout, [os.path.basename(w) for w in workdirs],
               [("optim.learning_rate", list(LEARNING_RATES))])
