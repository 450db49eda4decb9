r"""Training start-up time and peak memory as the corpus grows 1x -> 10x -> 100x: a prepared
corpus (`data.source=prepared:DIR`) against the in-memory path (`data.source='DIR/*.txt'`).

    python experiments/corpus_scale/run.py --root=/tmp/corpus_scale --scales=1,10,100 \
        --in_memory_scales=1,10

Corpus Nx: N copies of the 2,225 BBC News articles, one document per article (copy 0 as shipped,
copy c with each article's words shuffled by a seeded generator: the same vocabulary and
lengths, new text), one .txt file per copy (blank-line separated documents). One WordPiece tokenizer (configs/mlm.py:runlocal's 8,192 pieces, trained on
copy 0) serves every run, so tokenizer training is not in the figures.

Per scale: `python -m research.data.prepare` (time, tokens/s, peak RSS), then a 2-step
`configs/mlm.py:runlocal` training run per path, measuring from process start to the first
train step (the first line of metrics.jsonl: data, model init and the step's compilation) and
the process's peak resident memory (wait4's ru_maxrss). One JSON line per measurement on stdout
(and ROOT/results.jsonl), then a Markdown table.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

CONFIG = "--config=configs/mlm.py:runlocal"
TRAIN = ["--config.train.steps=2", "--config.evals.batches=1", "--config.logging.every_steps=1",
         "--config.logging.progress=False", "--config.logging.tensorboard=False"]


def write_corpus(root: str, scale: int) -> str:
  """ROOT/text_Nx/part-CCCC.txt, written once; returns the glob."""
  from research.data import sources  # pylint: disable=g-import-not-at-top
  directory = os.path.join(root, f"text_{scale}x")
  done = os.path.join(directory, "COMPLETE")
  if not os.path.exists(done):
    os.makedirs(directory, exist_ok=True)
    articles = [text for _, text in sources.read_bbc_news()]
    for copy in range(scale):
      rng = random.Random(copy)
      docs = [" ".join(a.split() if copy == 0 else rng.sample(a.split(), len(a.split())))
              for a in articles]  # one line per article: one document each
      with open(os.path.join(directory, f"part-{copy:04d}.txt"), "w") as f:
        f.write("\n\n".join(docs) + "\n")
    open(done, "w").close()
  return os.path.join(directory, "*.txt")


def write_tokenizer(root: str) -> str:
  from research.data import sources, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, "tokenizer.json")
  if not os.path.exists(path):
    tok = tokenizer_lib.train("encoder", [[t for _, t in sources.read_bbc_news()]], 8192)
    tokenizer_lib.save(tok, root)
  return path


def measure(argv, metrics_file=None) -> dict:
  """Runs argv; seconds to the first line of `metrics_file` (if given), wall seconds, peak RSS."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  start = time.time()
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  first_step = None
  while first_step is None and metrics_file and proc.poll() is None:
    if os.path.exists(metrics_file) and os.path.getsize(metrics_file) > 0:
      first_step = time.time() - start
    time.sleep(0.02)
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.time() - start
  out = proc.stdout.read()
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise SystemExit(f"{' '.join(argv)} failed with exit code {proc.returncode}")
  return {"startup_s": None if first_step is None else round(first_step, 2),
          "load_1min": round(os.getloadavg()[0], 1),
          "wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "stdout": out}


def time_build(source: str, tokenizer: str):
  """In this process: seconds to build the data (`research.data.build`) and its first batch."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import mlm  # pylint: disable=g-import-not-at-top
  from research import data as data_lib  # pylint: disable=g-import-not-at-top
  config = mlm.get_config("runlocal")
  config.data.update(source=source, tokenizer=tokenizer)
  start = time.time()
  data = data_lib.build(config, "/nonexistent")  # a given tokenizer: the workdir is not read
  built = time.time()
  data.train.host_batch(0)
  print(json.dumps({"build_s": round(built - start, 2),
                    "first_batch_s": round(time.time() - built, 3)}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", default="/tmp/corpus_scale")
  parser.add_argument("--scales", default="1,10,100")
  parser.add_argument("--in_memory_scales", default="1,10")
  parser.add_argument("--repeats", type=int, default=1,
                      help="training runs per (scale, path): the fastest start-up is kept (the "
                      "machine may be shared), with the largest peak RSS")
  parser.add_argument("--skip_prepare", action="store_true",
                      help="reuse ROOT/prepared_Nx from an earlier run")
  parser.add_argument("--time_build", metavar="SOURCE",
                      help="only time research.data.build of SOURCE in this process (JSON line)")
  args = parser.parse_args()
  if args.time_build:
    return time_build(args.time_build, write_tokenizer(args.root))
  os.makedirs(args.root, exist_ok=True)
  tokenizer = write_tokenizer(args.root)
  results = []
  def emit(row):
    results.append(row)
    print(json.dumps(row), flush=True)
    with open(os.path.join(args.root, "results.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
  for scale in map(int, args.scales.split(",")):
    text = write_corpus(args.root, scale)
    data = [f"--config.data.tokenizer={tokenizer}"]
    output = os.path.join(args.root, f"prepared_{scale}x")
    if not args.skip_prepare:
      shutil.rmtree(output, ignore_errors=True)
      prep = measure([sys.executable, "-m", "research.data.prepare", CONFIG, *data,
                      f"--config.data.source={text}", f"--output={output}", "--progress=false"])
      summary = json.loads(prep.pop("stdout").strip().splitlines()[-1])
      emit({"scale": scale, "path": "prepare", "seconds": summary["seconds"],
            "tokens": summary["tokens"], "tokens_per_sec": summary["tokens_per_sec"],
            "train_rows": summary["train_rows"], "peak_rss_mb": prep["peak_rss_mb"],
            "load_1min": prep["load_1min"]})
    paths = [("prepared", f"prepared:{output}")]
    if str(scale) in args.in_memory_scales.split(","):
      paths.append(("in-memory", text))
    for name, source in paths:
      workdir = os.path.join(args.root, f"run_{name}_{scale}x")
      runs = []
      for _ in range(args.repeats):
        shutil.rmtree(workdir, ignore_errors=True)
        runs.append(measure([sys.executable, "-m", "research.main", CONFIG,
                             f"--workdir={workdir}", *data, f"--config.data.source={source}",
                             *TRAIN], metrics_file=os.path.join(workdir, "metrics.jsonl")))
      run = min(runs, key=lambda r: r["startup_s"])
      run.pop("stdout")
      build = measure([sys.executable, __file__, f"--root={args.root}",
                       f"--time_build={source}"])
      run.update(json.loads(build.pop("stdout").strip().splitlines()[-1]),
                 build_peak_rss_mb=build["peak_rss_mb"])
      run["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
      run["startup_s_all"] = [r["startup_s"] for r in runs]
      with open(os.path.join(workdir, "summary.json")) as f:
        rows = json.load(f)["data/train_rows"]
      emit({"scale": scale, "path": name, "train_rows": rows, **run})
  print("\n| corpus | train rows | path | start-up to first step (s) | peak RSS (MB) | "
        "data build (s) | data build peak RSS (MB) | load |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in results:
    if r["path"] != "prepare":
      print(f"| {r['scale']}x | {r['train_rows']:,} | {r['path']} | {r['startup_s']} | "
            f"{r['peak_rss_mb']:,} | {r['build_s']} | {r['build_peak_rss_mb']:,} | "
            f"{r['load_1min']} |")
  print("\n| corpus | tokens | prepare (s) | tokens/s | peak RSS (MB) | load |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in results:
    if r["path"] == "prepare":
      print(f"| {r['scale']}x | {r['tokens']:,} | {r['seconds']} | {r['tokens_per_sec']:,} | "
            f"{r['peak_rss_mb']:,} | {r['load_1min']} |")


if __name__ == "__main__":
  main()
