r"""The compression part of experiments/minilm_bbc_offline: all-MiniLM-L6-v2 fine-tuned on BBC
News, compressed nine ways.

Run through the folder's driver:
  python experiments/minilm_bbc_offline/run.py --part=compress --root=/tmp/minilm_bbc \
      [--rows=a,b] [--repeats=15]

Every workdir is one command as a user types it, run unless ROOT/compress/<row> finished already
(so a second call only measures); the table prints each command. The teacher:
  python -m research.main --config=experiments/minilm_bbc_offline/configs/minilm_bbc.py:steps=150 \
      --workdir=ROOT/compress/teacher
The rows: `python -m research.compress --workdir=ROOT/compress/teacher --method=M ...
--out=ROOT/compress/<row>` (ROWS below), and one run pruned while it fine-tunes (the teacher's
command with a `prune` section). Then, for the teacher and every row, in this one process:
  parameters     values in the parameter checkpoint (non-zero ones, int8 ones)
  size on disk   bytes of the checkpoint predict reads (best/ if kept, else checkpoints/)
  test acc       `research.predict.Predictor` over the task's test split (223 articles)
  = teacher      the share of test articles whose predicted label is the teacher's
  latency        CPU milliseconds per example at batch 1 and 32 through the same predict path
                 (tokenization, the jitted forward pass, scores), every model loaded and compiled
                 first, then `repeats` rounds, each running the same 32 test articles through
                 every (model, batch size) in turn (32 calls at batch 1, one at 32), interleaved
                 so a load change hits every model alike; the median of the rounds
`measure` writes ROOT/compress/results.json (with `uptime` before and after timing).
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TEACHER_CONFIG = "--config=experiments/minilm_bbc_offline/configs/minilm_bbc.py:steps=150"
# row -> (label, arguments of `python -m research.compress --workdir=TEACHER`)
ROWS = {
    "distill2": ("distilled, 2 blocks", ("--method=distill", "--distill_layers=2")),
    "distill3": ("distilled, 3 blocks", ("--method=distill", "--distill_layers=3")),
    "int8w": ("int8 weights", ("--method=quantize",)),
    "int8wa": ("int8 weights + activations", ("--method=quantize", "--quantize_activations")),
    "sparse50": ("50% unstructured, one-shot", ("--method=prune", "--prune_sparsity=0.5")),
    "sparse80": ("80% unstructured, one-shot", ("--method=prune", "--prune_sparsity=0.8")),
    "heads25": ("25% heads + FFN neurons removed",
                ("--method=prune", "--prune_heads=0.25", "--prune_neurons=0.25")),
    "heads50": ("50% heads + FFN neurons removed",
                ("--method=prune", "--prune_heads=0.5", "--prune_neurons=0.5")),
}
# A run pruned while it fine-tunes: the teacher's recipe with the cubic schedule to 80%.
FINETUNED = {"sparse80ft": ("80% unstructured, pruned while fine-tuning",
                            ("--config.prune.sparsity=0.8", "--config.prune.end_step=100"))}


def commands(root: str, rows, extra=()) -> dict:
  """{row: (label, argv as a user types it)}, the teacher first."""
  teacher = os.path.join(root, "teacher")
  out = {"teacher": ("teacher: MiniLM fine-tuned (float32)",
                     ["python", "-m", "research.main", TEACHER_CONFIG, f"--workdir={teacher}",
                      *extra])}
  for row in rows:
    if row in ROWS:
      label, args = ROWS[row]
      out[row] = (label, ["python", "-m", "research.compress", f"--workdir={teacher}", *args,
                          f"--out={os.path.join(root, row)}"])
    else:
      label, args = FINETUNED[row]
      out[row] = (label, ["python", "-m", "research.main", TEACHER_CONFIG,
                          f"--workdir={os.path.join(root, row)}", *args, *extra])
  return out


def finished(argv: list, workdir: str) -> bool:
  """Training runs (the teacher, distillation, pruning while fine-tuning) write summary.json at
  their end only (labels.json at their start); quantize and prune write labels.json last."""
  written = any(a in argv for a in ("--method=quantize", "--method=prune"))
  return os.path.exists(os.path.join(workdir, "labels.json" if written else "summary.json"))


def run(argv: list, workdir: str):
  if finished(argv, workdir):
    return
  print("$", shlex.join(argv), flush=True)
  start = time.time()
  proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{shlex.join(argv)} failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
  print(f"  done in {time.time() - start:.0f} s: {proc.stdout.strip()[-300:]}", flush=True)


def checkpoint_dir(workdir: str) -> str:
  best = os.path.join(workdir, "best")
  return best if os.path.isdir(best) else os.path.join(workdir, "checkpoints")


def disk_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory)
             for f in files)


def describe(predictor, workdir: str, rows: list) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(predictor.params)]
  labels = [p["label"] for p in predictor.predict([{"text": r["text"]} for r in rows])]
  return {"params": int(sum(leaf.size for leaf in leaves)),
          "nonzero": int(sum(np.count_nonzero(leaf) for leaf in leaves)),
          "int8": int(sum(leaf.size for leaf in leaves if leaf.dtype == np.int8)),
          "bytes": disk_bytes(checkpoint_dir(workdir)),
          "test/accuracy": float(np.mean([p == r["label"] for p, r in zip(labels, rows)])),
          "labels": labels}


def latencies(predictors: dict, texts: list, repeats: int, examples: int = 32) -> dict:
  """{(row, batch size): median seconds per example} over interleaved rounds; each round runs
  the same `examples` texts through every predictor, in calls of its batch size."""
  rows = [{"text": t} for t in texts[:examples]]
  calls = {key: [rows[i:i + key[1]] for i in range(0, examples, key[1])] for key in predictors}
  for key, batches in calls.items():
    predictors[key].predict(batches[0])  # compiles
  times = {key: [] for key in calls}
  for _ in range(repeats):
    for key, batches in calls.items():
      start = time.perf_counter()
      for batch in batches:
        predictors[key].predict(batch)
      times[key].append((time.perf_counter() - start) / examples)
  return {key: statistics.median(seconds) for key, seconds in times.items()}


def uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def table(results: dict) -> str:
  lines = ["| model | parameters (non-zero) | size on disk | test acc | = teacher | "
           "ms/example, batch 1 | batch 32 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in results.values():
    kind = f", {r['int8'] / 1e6:.1f}M int8" if r["int8"] else ""
    lines.append(
        f"| {r['label']} | {r['params'] / 1e6:.2f}M ({r['nonzero'] / 1e6:.2f}M{kind}) | "
        f"{r['bytes'] / 2**20:.1f} MiB | {r['test/accuracy']:.4f} | {r['agreement']:.4f} | "
        f"{r['ms/example'][1]:.2f} | {r['ms/example'][32]:.2f} |")
  return "\n".join(lines)


def measure(root: str, rows, repeats: int = 15, extra=()) -> dict:
  """Runs (or reads) the teacher and `rows` under `root`, then measures them all in this process;
  `extra`: more --config.key=value flags for the training runs (the teacher and the row pruned
  while fine-tuning; the compress rows follow the teacher's config). Prints each command; returns
  the rows and writes them to ROOT/results.json."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not results
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.data import labelled  # pylint: disable=g-import-not-at-top
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  todo = commands(root, rows, extra)
  for row, (_, argv) in todo.items():
    run(argv, os.path.join(root, row))
  config = checkpoint.workdir_config(os.path.join(root, "teacher"))
  test_rows = labelled.load_rows(ml_collections.ConfigDict(config["tasks"]["bbc_news"]))["test"]
  results, predictors = {}, {}
  for row, (label, argv) in todo.items():
    workdir = os.path.join(root, row)
    for batch_size in (1, 32):
      predictors[row, batch_size] = Predictor(workdir, batch_size=batch_size)
    results[row] = {"label": label, "command": shlex.join(argv),
                    **describe(predictors[row, 32], workdir, test_rows)}
    print(f"{label}: test accuracy {results[row]['test/accuracy']:.4f}", flush=True)
  teacher_labels = results["teacher"]["labels"]
  for r in results.values():
    r["agreement"] = float(np.mean(np.equal(r["labels"], teacher_labels)))
  for r in results.values():
    del r["labels"]
  before = uptime()
  seconds = latencies(predictors, [r["text"] for r in test_rows], repeats)
  after = uptime()
  for (row, batch_size), s in seconds.items():
    results[row].setdefault("ms/example", {})[batch_size] = 1e3 * s
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump({"uptime_before": before, "uptime_after": after, "repeats": repeats,
               "rows": results}, f, indent=2)
  print(f"\nuptime before timing: {before}\nuptime after timing:  {after}")
  for r in results.values():
    print(f"{r['label']}: {r['command']}")
  return results
