r"""Distilled students of the MiniLM BBC News teacher: the issue-13 table's distillation rows.

  python experiments/compress_bbc_news/distill.py --teacher=TEACHER --root=/tmp/distill_runs \
      [--layers=2,3] [--steps=150]

TEACHER: MiniLM fine-tuned on BBC News, e.g. (the PEFT table's 'full' run, 300 steps):
  python -m research.main --config=configs/finetune.py:task=bbc_news,runlocal --workdir=TEACHER \
      --config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2 \
      --config.optim.learning_rate=1e-4
Each student is one command as a user types it (run unless ROOT/student_N finished already):
  python -m research.compress --workdir=TEACHER --method=distill --out=ROOT/student_N \
      --distill_layers=N --distill_steps=STEPS
(every_k init: the teacher's embeddings, pooler, head and blocks 0, 6/N, ...; T = 2, soft and
hard weight 1; the teacher's recipe otherwise: batch 32 x 128 tokens, learning rate 1e-4.)
Then, for the teacher and each student, in one process: parameters, size on disk of the kept
parameters (du of WORKDIR/best/STEP: parameters only, float32), test accuracy (the run's
summary: its best checkpoint on the test split), CPU latency per example at batch 1 and 32
(experiments/compress_bbc_news/latency.py: the predict path, interleaved, median of 7).
Prints a Markdown table and writes ROOT/distill_results.json.
"""
import json
import os
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
REPO = os.path.join(os.path.dirname(__file__), "..", "..")

flags.DEFINE_string("teacher", None, "The fine-tuned MiniLM teacher's workdir.")
flags.DEFINE_string("root", "/tmp/distill_runs", "Where the students go.")
flags.DEFINE_list("layers", ["2", "3"], "Student depths.")
flags.DEFINE_integer("steps", 150, "Training steps of each student.")
FLAGS = flags.FLAGS


def student_command(teacher: str, out: str, layers: int, steps: int) -> list:
  return ["python", "-m", "research.compress", f"--workdir={teacher}", "--method=distill",
          f"--out={out}", f"--distill_layers={layers}", f"--distill_steps={steps}"]


def summary_of(workdir: str, cmd: list | None = None) -> dict:
  """WORKDIR/summary.json, running `cmd` first unless the run finished already."""
  path = os.path.join(workdir, "summary.json")
  if cmd and not os.path.exists(path):
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(path) as f:
    return json.load(f)


def kept_bytes(workdir: str, step: int) -> int:
  """Bytes on disk of WORKDIR/best/STEP (the kept parameters), as `du -sb` counts them."""
  out = subprocess.run(["du", "-sb", os.path.join(workdir, "best", str(step))],
                       capture_output=True, text=True, check=True).stdout
  return int(out.split()[0])


def test_texts(n: int = 32) -> list:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research.data import labelled  # pylint: disable=g-import-not-at-top
  rows = labelled.load_rows(ml_collections.ConfigDict({"source": "bbc_news", "seed": 0}))
  return [r["text"] for r in rows["test"][:n]]


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not the result
  from latency import per_example_latency  # pylint: disable=g-import-not-at-top
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  blocks = checkpoint.workdir_config(FLAGS.teacher)["model"]["num_layers"]
  workdirs, results = {f"teacher, {blocks} blocks": FLAGS.teacher}, {}
  commands = {}
  for layers in map(int, FLAGS.layers):
    out = os.path.join(FLAGS.root, f"student_{layers}")
    commands[f"distilled, {layers} blocks"] = student_command(FLAGS.teacher, out, layers,
                                                             FLAGS.steps)
    workdirs[f"distilled, {layers} blocks"] = out
  for name, workdir in workdirs.items():
    summary = summary_of(workdir, commands.get(name))
    results[name] = {"params": summary["params/total"],
                     "bytes": kept_bytes(workdir, summary["best/step"]),
                     "test/accuracy": summary["test/bbc_news/accuracy"],
                     "command": " ".join(commands[name]) if name in commands else None}
  load_before = os.getloadavg()[0]
  latency = per_example_latency(workdirs, test_texts(), batch_sizes=(1, 32))
  load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after the timing"
  lines = ["| model | params | size on disk (MiB) | test acc | ms/example, batch 1 | "
           "ms/example, batch 32 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for name, r in results.items():
    r["seconds_per_example"] = latency[name]
    lines.append(f"| {name} | {r['params']:,} | {r['bytes'] / 2**20:.1f} | "
                 f"{r['test/accuracy']:.4f} | {1e3 * latency[name][1]:.2f} | "
                 f"{1e3 * latency[name][32]:.2f} |")
  print("\n".join(lines))
  print(load)
  with open(os.path.join(FLAGS.root, "distill_results.json"), "w") as f:
    json.dump({"rows": results, "load": load}, f, indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("teacher")
  app.run(main)
