r"""PEFT on a real pretrained base: every method on BBC News from all-MiniLM-L6-v2, one budget.

  python experiments/peft_bbc_news/run.py --workdir=/tmp/peft_bbc [--methods=lora,bitfit]

Each method is one command line, as a user types it (the table prints it):
  python -m research.main --config=configs/finetune.py:task=bbc_news,runlocal,peft=METHOD \
      --workdir=WORKDIR/METHOD --config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2
'full' is the same without `peft` (every parameter trained, --config.optim.learning_rate=1e-4).
runlocal: 300 steps of 32 x 128 tokens, float32. Beside them, TF-IDF + logistic regression on the
same split. Step time comes from a second, short run of each command (`--timing_steps` steps,
no evaluation until the end, WORKDIR/timing/METHOD), one at a time, so that it can be taken on an
otherwise idle machine: the median over its logged intervals, the compiling step excluded. Step
memory is the compiled train step's (`perf/step_memory_bytes` of the timing run: the same
program). Prints a Markdown table and
writes WORKDIR/results.json. Runs that finished are read, not rerun.
"""
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bbc_news_finetune"))

METHODS = ("full", "lora", "adalora", "adapter", "prefix", "prompt", "bitfit", "ia3")
BASE = "hf:sentence-transformers/all-MiniLM-L6-v2"
FULL_LEARNING_RATE = 1e-4  # runlocal's 1e-3 is for training from scratch

flags.DEFINE_string("workdir", "/tmp/peft_bbc", "Where the runs go.")
flags.DEFINE_list("methods", list(METHODS), "Methods to run ('full' = full fine-tuning).")
flags.DEFINE_list("extra", [], "More --config.key=value flags for every run (e.g. for a test).")
flags.DEFINE_integer("timing_steps", 25, "Steps of the timing run of each method.")
FLAGS = flags.FLAGS


def command(method: str, workdir: str, extra=()) -> list:
  arg = "task=bbc_news,runlocal" + ("" if method == "full" else f",peft={method}")
  cmd = ["python", "-m", "research.main", f"--config=configs/finetune.py:{arg}",
         f"--workdir={workdir}", f"--config.init.weights={BASE}"]
  if method == "full":
    cmd.append(f"--config.optim.learning_rate={FULL_LEARNING_RATE}")
  return cmd + list(extra)


def step_seconds(workdir: str, tokens_per_step: int) -> float | None:
  """Median seconds per step over the logged intervals (the first, compiling one excluded)."""
  rates = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rate = json.loads(line).get("perf/tokens_per_sec")
      if rate:
        rates.append(tokens_per_step / rate)
  return statistics.median(rates) if rates else None


def finished_run(cmd: list, workdir: str) -> dict:
  """The summary of `cmd` in `workdir`, running it first unless it finished already."""
  if not os.path.exists(os.path.join(workdir, "summary.json")):
    repo = os.path.join(os.path.dirname(__file__), "..", "..")
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=repo, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def run_method(method: str, root: str, extra=(), timing_steps: int = 25) -> dict:
  workdir = os.path.join(root, method)
  cmd = command(method, workdir, extra)
  summary = finished_run(cmd, workdir)
  timing_dir = os.path.join(root, "timing", method)
  timing = [f"--config.train.steps={timing_steps}", "--config.logging.every_steps=5",
            f"--config.evals.every_steps={timing_steps}", "--config.logging.progress=False"]
  if method == "adalora":  # its budget schedule, as the recipe sets it, for the shorter run
    timing += [f"--config.peft.adalora_warmup={timing_steps // 10}",
               f"--config.peft.adalora_final={4 * timing_steps // 10}"]
  timed = finished_run(command(method, timing_dir, list(extra) + timing), timing_dir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  tokens = config["train"]["batch_size"] * config["data"]["seq_len"]
  return {"trainable": summary["params/trainable"], "total": summary["params/total"],
          "eval/accuracy": summary["eval/bbc_news/accuracy"],
          "test/accuracy": summary["test/bbc_news/accuracy"],
          "step_seconds": step_seconds(timing_dir, tokens),
          "step_memory_bytes": timed.get("perf/step_memory_bytes"),  # the same compiled step
          "wall_seconds": summary["wall_seconds"], "command": " ".join(cmd)}


def table(results: dict) -> str:
  lines = ["| method | trained params | eval acc | test acc | step time (s) | step memory (MiB) |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for name, r in results.items():
    if "trainable" not in r:
      lines.append(f"| {name} | | {r['eval/accuracy']:.4f} | {r['test/accuracy']:.4f} | | |")
      continue
    memory = f"{r['step_memory_bytes'] / 2**20:.0f}" if r["step_memory_bytes"] else ""
    lines.append(
        f"| {name} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
        f"{r['eval/accuracy']:.4f} | {r['test/accuracy']:.4f} | {r['step_seconds']:.2f} | "
        f"{memory} |")
  return "\n".join(lines)


def main(argv):
  del argv
  import compare  # pylint: disable=g-import-not-at-top  (experiments/bbc_news_finetune)
  unknown = sorted(set(FLAGS.methods) - set(METHODS))
  if unknown:
    raise SystemExit(f"unknown methods {unknown}; known: {list(METHODS)}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = {}
  for method in FLAGS.methods:
    results[method] = run_method(method, FLAGS.workdir, FLAGS.extra, FLAGS.timing_steps)
    print(f"{method}: test accuracy {results[method]['test/accuracy']:.4f}", flush=True)
  baseline = compare.tfidf_baseline()
  results["tfidf+logreg"] = {k: baseline[k] for k in ("eval/accuracy", "test/accuracy")}
  print(table(results))
  for method in FLAGS.methods:
    print(f"{method}: {results[method]['command']}")
  with open(os.path.join(FLAGS.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
