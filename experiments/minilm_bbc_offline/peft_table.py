r"""The PEFT part of experiments/minilm_bbc_offline: every method on BBC News from
all-MiniLM-L6-v2, one budget, beside full fine-tuning and TF-IDF + logistic regression.

Run through the folder's driver:
  python experiments/minilm_bbc_offline/run.py --part=peft --root=/tmp/minilm_bbc \
      [--methods=lora,bitfit] [--timing_steps=25]

Each method is one command line, as a user types it (the table prints it):
  python -m research.main --config=experiments/minilm_bbc_offline/configs/minilm_bbc.py:peft=METHOD \
      --workdir=ROOT/peft/METHOD
'full' is the same without `peft` (every parameter trained, learning rate 1e-4). The recipe
(configs/minilm_bbc.py): 300 steps of 32 x 128 tokens, float32. Step time comes from a second,
short run of each command (`steps=timing_steps`, no evaluation until the end,
ROOT/peft/timing/METHOD), one at a time, so that it can be taken on an otherwise idle machine:
the median over its logged intervals, the compiling step excluded. Step memory is the compiled
train step's (`perf/step_memory_bytes` of the timing run: the same program). `measure` writes
ROOT/peft/results.json; runs that finished are read, not rerun.
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bbc_news_finetune"))

METHODS = ("full", "lora", "adalora", "adapter", "prefix", "prompt", "bitfit", "ia3")
CONFIG = "experiments/minilm_bbc_offline/configs/minilm_bbc.py"
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def command(method: str, workdir: str, extra=(), steps: int | None = None) -> list:
  """The user's command line of `method`; `steps`: the recipe's `steps=` argument (its default
  when None)."""
  arg = ",".join(([] if method == "full" else [f"peft={method}"]) +
                 ([] if steps is None else [f"steps={steps}"]))
  return ["python", "-m", "research.main", f"--config={CONFIG}" + (f":{arg}" if arg else ""),
          f"--workdir={workdir}", *extra]


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
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def run_method(method: str, root: str, extra=(), timing_steps: int = 25) -> dict:
  workdir = os.path.join(root, method)
  cmd = command(method, workdir, extra)
  summary = finished_run(cmd, workdir)
  timing_dir = os.path.join(root, "timing", method)
  # steps= in the recipe's argument (AdaLoRA's budget schedule follows it), and as a flag after
  # `extra`, which may shrink the main runs' steps.
  timing = [f"--config.train.steps={timing_steps}", "--config.logging.every_steps=5",
            f"--config.evals.every_steps={timing_steps}", "--config.logging.progress=False"]
  timed = finished_run(command(method, timing_dir, list(extra) + timing, steps=timing_steps),
                       timing_dir)
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


def measure(root: str, methods, extra=(), timing_steps: int = 25) -> dict:
  """Runs (or reads) every method under `root` and the TF-IDF baseline; prints each method's
  command; returns the rows and writes them to ROOT/results.json."""
  import compare  # pylint: disable=g-import-not-at-top  (experiments/bbc_news_finetune)
  os.makedirs(root, exist_ok=True)
  results = {}
  for method in methods:
    results[method] = run_method(method, root, extra, timing_steps)
    print(f"{method}: test accuracy {results[method]['test/accuracy']:.4f}", flush=True)
  baseline = compare.tfidf_baseline()
  results["tfidf+logreg"] = {k: baseline[k] for k in ("eval/accuracy", "test/accuracy")}
  for method in methods:
    print(f"{method}: {results[method]['command']}")
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results
