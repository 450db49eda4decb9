r"""Int8 quantization of the MiniLM BBC News teacher: size, accuracy and CPU latency per example.

  python experiments/compress_bbc_news/quantize.py --teacher=/tmp/teacher_quantize \
      --out=/tmp/quantize_bbc

The teacher is all-MiniLM-L6-v2 fine-tuned on BBC News (float32):
  python -m research.main --config=configs/finetune.py:task=bbc_news,runlocal \
      --workdir=/tmp/teacher_quantize --config.init.weights=hf:<all-MiniLM-L6-v2 dir> \
      --config.optim.learning_rate=1e-4 --config.train.steps=150 --config.evals.every_steps=50 \
      --config.model.dtype=float32
Each int8 workdir is one command (printed; skipped if OUT/<row> exists):
  python -m research.compress --workdir=TEACHER --method=quantize [--quantize_activations] \
      --out=OUT/<row>
Per row: parameter values (int8 ones in brackets), the parameter checkpoint's size on disk (the
teacher's best/ checkpoint: parameters only, as the int8 workdirs hold), test accuracy (the
whole test split through the predict path's jitted forward), the largest |logit - teacher logit|
and the share of test texts whose argmax equals the teacher's, and latency per example at batch
1 and 32 (`latency.per_example_latency`: median of interleaved repeats, one process). Prints a
Markdown table and writes OUT/results.json.
"""
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

flags.DEFINE_string("teacher", "/tmp/teacher_quantize", "The fine-tuned float workdir.")
flags.DEFINE_string("out", "/tmp/quantize_bbc", "Where the int8 workdirs and results go.")
flags.DEFINE_integer("repeats", 15, "Interleaved latency repeats (the median is reported).")
FLAGS = flags.FLAGS

ROWS = {"int8 weights": (), "int8 weights + activations": ("--quantize_activations",)}


def quantized(teacher: str, out: str, extra: tuple) -> str:
  if not os.path.exists(os.path.join(out, "config.json")):
    cmd = [sys.executable, "-m", "research.compress", f"--workdir={teacher}",
           "--method=quantize", *extra, f"--out={out}"]
    print(" ".join(["python", *cmd[1:]]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
  return out


def disk_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory)
             for f in files)


def params_dir(workdir: str) -> str:
  best = os.path.join(workdir, "best")
  return best if os.path.isdir(best) else os.path.join(workdir, "checkpoints")


def test_logits(predictor, split) -> np.ndarray:
  parts = [np.asarray(predictor.forward(predictor.params, split.batches.host_batch(step))["logits"])
           for step in range(split.steps)]
  return np.concatenate(parts)[:split.size]


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not results
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from latency import per_example_latency  # pylint: disable=g-import-not-at-top
  from research import checkpoint, tasks  # pylint: disable=g-import-not-at-top
  from research.data import labelled  # pylint: disable=g-import-not-at-top
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  workdirs = {"float teacher": FLAGS.teacher}
  for name, extra in ROWS.items():
    workdirs[name] = quantized(FLAGS.teacher, os.path.join(FLAGS.out, name.replace(" ", "_")
                                                           .replace("+", "and")), extra)
  config = checkpoint.workdir_config(FLAGS.teacher)
  task = tasks.build(ml_collections.ConfigDict(config), FLAGS.teacher).tasks[0]
  split, labels = task.splits["test"], task.references["test"]
  results, teacher_logits = {}, None
  for name, workdir in workdirs.items():
    predictor = Predictor(workdir, batch_size=config["train"]["batch_size"])
    logits = test_logits(predictor, split)
    teacher_logits = logits if teacher_logits is None else teacher_logits
    leaves = jax.tree.leaves(predictor.params)
    results[name] = {
        "workdir": workdir, "params": int(sum(np.size(l) for l in leaves)),
        "int8_params": int(sum(np.size(l) for l in leaves if np.asarray(l).dtype == np.int8)),
        "disk_bytes": disk_bytes(params_dir(workdir)),
        "test/accuracy": float((logits.argmax(-1) == labels).mean()),
        "max_abs_logit": float(np.abs(logits).max()),
        "max_logit_diff": float(np.abs(logits - teacher_logits).max()),
        "argmax_agreement": float((logits.argmax(-1) == teacher_logits.argmax(-1)).mean())}
  texts = [r["text"] for r in labelled.load_rows(
      ml_collections.ConfigDict(config["tasks"][task.name]))["test"]]
  latency = per_example_latency(workdirs, texts, (1, 32), FLAGS.repeats)
  for name in workdirs:
    results[name]["latency_ms"] = {str(b): 1e3 * s for b, s in latency[name].items()}
  results["_uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(table(results))
  print(f"max |teacher logit| {results['float teacher']['max_abs_logit']:.2f}; "
        f"{results['_uptime']}")


def table(results: dict) -> str:
  lines = ["| model | parameters | size on disk | test acc | max abs logit diff | "
           "argmax = teacher | ms/example, batch 1 | ms/example, batch 32 |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for name, r in results.items():
    if name.startswith("_"):
      continue
    int8 = f" ({r['int8_params'] / 1e6:.1f}M int8)" if r["int8_params"] else ""
    lines.append(f"| {name} | {r['params'] / 1e6:.1f}M{int8} | {r['disk_bytes'] / 2**20:.1f} MiB | "
                 f"{r['test/accuracy']:.4f} | {r['max_logit_diff']:.3f} | "
                 f"{r['argmax_agreement']:.4f} | {r['latency_ms']['1']:.1f} | "
                 f"{r['latency_ms']['32']:.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
