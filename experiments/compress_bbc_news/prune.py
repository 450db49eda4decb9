r"""Pruning rows of the compression table: the MiniLM BBC News teacher pruned four ways.

  python experiments/compress_bbc_news/prune.py --teacher=/tmp/teacher_prune --root=/tmp/prune_rows

Each row is one command as a user types it (the table prints it):
  python -m research.compress --workdir=TEACHER --method=prune --prune_sparsity=0.5 --out=ROOT/sparse50
  (0.8: sparse80; --prune_heads=F --prune_neurons=F with F = 0.25, 0.5: heads25, heads50)
The unstructured rows are one-shot magnitude pruning, not fine-tuned afterwards. For each row and
the teacher: parameters (non-zero ones in brackets), the checkpoint's size on disk (bytes of
checkpoints/, the teacher's best/: parameters only both), test accuracy through
`research.predict.Predictor` on the task's test split, and CPU latency per example at batch 1
and 32 (experiments/compress_bbc_news/latency.py: every model in this one process, interleaved).
--finetuned=NAME=WORKDIR adds a run pruned while fine-tuning (the `prune` config section).
Prints a Markdown table and writes ROOT/results.json. Rows already written are read, not redone.
"""
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ROWS = {"sparse50": ["--prune_sparsity=0.5"], "sparse80": ["--prune_sparsity=0.8"],
        "heads25": ["--prune_heads=0.25", "--prune_neurons=0.25"],
        "heads50": ["--prune_heads=0.5", "--prune_neurons=0.5"]}

flags.DEFINE_string("teacher", None, "The fine-tuned MiniLM BBC News workdir.")
flags.DEFINE_string("root", "/tmp/prune_rows", "Where the pruned workdirs go.")
flags.DEFINE_list("rows", list(ROWS), "Which rows.")
flags.DEFINE_list("finetuned", [], "More rows, NAME=WORKDIR: runs of research.main with a `prune` "
                  "section (their best/ checkpoint is measured).")
flags.DEFINE_integer("repeats", 7, "Timed rounds of the latency measurement.")
FLAGS = flags.FLAGS


def command(teacher: str, out: str, args: list) -> list:
  return ["python", "-m", "research.compress", f"--workdir={teacher}", "--method=prune", *args,
          f"--out={out}"]


def pruned(cmd: list, out: str):
  if not os.path.exists(os.path.join(out, "config.json")):
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def dir_bytes(root: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def test_accuracy(workdir: str, rows: list) -> float:
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  predictions = Predictor(workdir, batch_size=32).predict([{"text": r["text"]} for r in rows])
  return float(np.mean([p["label"] == r["label"] for p, r in zip(predictions, rows)]))


def describe(workdir: str, checkpoints: str, test_rows: list) -> dict:
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research import params as params_lib  # pylint: disable=g-import-not-at-top
  flat = params_lib.flatten(checkpoint.workdir_params(workdir, best=True))
  return {"params": int(sum(v.size for v in flat.values())),
          "nonzero": int(sum(np.count_nonzero(v) for v in flat.values())),
          "bytes": dir_bytes(checkpoints), "test/accuracy": test_accuracy(workdir, test_rows)}


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines
  import ml_collections  # pylint: disable=g-import-not-at-top
  from latency import per_example_latency  # pylint: disable=g-import-not-at-top
  from research.data import labelled  # pylint: disable=g-import-not-at-top
  test_rows = labelled.load_rows(ml_collections.ConfigDict({"source": "bbc_news", "seed": 0}))["test"]
  workdirs = {"teacher (float32)": FLAGS.teacher}
  results = {"teacher (float32)": describe(FLAGS.teacher, os.path.join(FLAGS.teacher, "best"),
                                           test_rows)}
  for name in FLAGS.rows:
    out = os.path.join(FLAGS.root, name)
    cmd = command(FLAGS.teacher, out, ROWS[name])
    pruned(cmd, out)
    workdirs[name] = out
    results[name] = {**describe(out, os.path.join(out, "checkpoints"), test_rows),
                     "command": " ".join(cmd)}
    print(f"{name}: test accuracy {results[name]['test/accuracy']:.4f}", flush=True)
  for name, workdir in (item.split("=", 1) for item in FLAGS.finetuned):
    workdirs[name] = workdir
    results[name] = describe(workdir, os.path.join(workdir, "best"), test_rows)
  latency = per_example_latency(workdirs, [r["text"] for r in test_rows], (1, 32), FLAGS.repeats)
  for name, by_batch in latency.items():
    results[name].update({f"latency_ms/batch{b}": 1e3 * s for b, s in by_batch.items()})
  with open(os.path.join(FLAGS.root, "results.json"), "w") as f:
    json.dump({"uptime": os.popen("uptime").read().strip(), "rows": results}, f, indent=2)
  print("| model | params (non-zero) | size on disk (MB) | test acc | ms/example b=1 | b=32 |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for name, r in results.items():
    print(f"| {name} | {r['params']:,} ({r['nonzero']:,}) | {r['bytes'] / 1e6:.1f} | "
          f"{r['test/accuracy']:.4f} | {r['latency_ms/batch1']:.2f} | {r['latency_ms/batch32']:.2f} |")


if __name__ == "__main__":
  flags.mark_flag_as_required("teacher")
  app.run(main)
