r"""The continual-learning table: all-MiniLM-L6-v2 learning BBC News topics one stage at a time.

  python experiments/continual_bbc_news/run.py --root=/tmp/continual_bbc_news [--rows=a,b]

Every row is one command as a user types it (printed with the table), run unless
ROOT/<row>/summary.json exists already:
  python -m research.main --config=configs/continual.py:sequence=S,method=M --workdir=ROOT/<row> \
      --config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2
for the class-incremental sequence (business/entertainment, politics/sports, tech: one head) and
the task-incremental one (business/entertainment, politics/sports, entertainment/tech: a head
each), each method. The figures are the run's summary.json: final average accuracy (test
split, after the last stage), BWT, mean forgetting, parameters trained per stage; wall time is
the whole command's. Prints a Markdown table and writes ROOT/results.json.
"""
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BASE = "--config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2"
SEQUENCES = {"class": "class-incremental", "task": "task-incremental"}
METHODS = {"naive": "naive fine-tuning", "ewc": "EWC (online)", "l2sp": "L2-SP",
           "replay": "replay (200 examples, 25% of each batch)",
           "lora": "LoRA per task (frozen base)"}
# row -> (sequence, method); LoRA needs the task id at test time: task-incremental only.
ROWS = {f"{s}_{m}": (s, m) for s in SEQUENCES for m in METHODS if (s, m) != ("class", "lora")}

flags.DEFINE_string("root", "/tmp/continual_bbc_news", "Where the rows' workdirs go.")
flags.DEFINE_list("rows", list(ROWS), "Which rows.")
flags.DEFINE_list("extra", [], "Flags added to every command (tests shrink the recipe).")
FLAGS = flags.FLAGS


def command(root: str, row: str, extra=()) -> list:
  sequence, method = ROWS[row]
  return ["python", "-m", "research.main",
          f"--config=configs/continual.py:sequence={sequence},method={method}",
          f"--workdir={os.path.join(root, row)}", BASE, *extra]


def run(argv: list, workdir: str) -> float | None:
  """Runs the command unless its workdir finished; returns its wall seconds (None: not run)."""
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return None
  start = time.time()
  proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"{shlex.join(argv)} failed:\n{proc.stderr[-3000:]}")
  return time.time() - start


def table(results: dict) -> str:
  lines = ["| sequence | method | final avg acc | BWT | forgetting | trained / stage | wall time |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in results.values():
    lines.append(f"| {r['sequence']} | {r['method']} | {r['average_accuracy']:.4f} | "
                 f"{r['bwt']:+.4f} | {r['forgetting']:.4f} | {r['trainable'] / 1e6:.2f}M | "
                 f"{r['wall_seconds'] / 60:.1f} min |")
  return "\n".join(lines)


def main(argv):
  del argv
  os.makedirs(FLAGS.root, exist_ok=True)
  path = os.path.join(FLAGS.root, "results.json")
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  for row in FLAGS.rows:
    argv = command(FLAGS.root, row, FLAGS.extra)
    print("$", shlex.join(argv), flush=True)
    seconds = run(argv, os.path.join(FLAGS.root, row))
    with open(os.path.join(FLAGS.root, row, "summary.json")) as f:
      summary = json.load(f)
    sequence, method = ROWS[row]
    results[row] = {
        "sequence": SEQUENCES[sequence], "method": METHODS[method], "command": shlex.join(argv),
        "average_accuracy": summary["continual/average_accuracy"],
        "bwt": summary["continual/bwt"], "forgetting": summary["continual/forgetting"],
        "trainable": summary["params/trainable"],
        "wall_seconds": seconds if seconds is not None else results.get(row, {}).get(
            "wall_seconds", summary["wall_seconds"]),
        "R": [[summary[f"continual/R/{i}/{j}"] for j in range(1, 4)] for i in range(1, 4)]}
    with open(path, "w") as f:
      json.dump(results, f, indent=2)
  shown = {row: results[row] for row in FLAGS.rows}
  print(table(shown))
  for r in shown.values():
    print(r["command"])


if __name__ == "__main__":
  app.run(main)
