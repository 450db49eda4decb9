"""CPU latency per example of workdirs' predict path (`research.predict.Predictor`).

  from latency import per_example_latency   # experiments/compress_bbc_news on sys.path
  per_example_latency({"teacher": W1, "int8": W2}, texts, batch_sizes=(1, 32))
  -> {"teacher": {1: seconds, 32: seconds}, "int8": {...}}

What is timed is `Predictor.predict(rows)` on `batch_size` rows (tokenization, the jitted
forward pass, scores), exactly what `python -m research.predict --batch_size=B` runs per batch,
divided by the batch size. Every model is loaded and compiled first (one untimed call each);
then `repeats` rounds time each (model, batch size) once, interleaved, so that load changes on a
shared machine hit every model alike; the median over the rounds is reported.
"""
import statistics
import time


def per_example_latency(workdirs: dict, texts: list, batch_sizes=(1, 32), repeats: int = 7
                        ) -> dict:
  """{name: {batch size: median seconds per example}} for {name: workdir}."""
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  if len(texts) < max(batch_sizes):
    raise ValueError(f"need at least {max(batch_sizes)} texts, got {len(texts)}")
  runs = {}
  for name, workdir in workdirs.items():
    for batch_size in batch_sizes:
      predictor = Predictor(workdir, batch_size=batch_size)
      rows = [{"text": t} for t in texts[:batch_size]]
      predictor.predict(rows)  # compiles
      runs[name, batch_size] = (predictor, rows)
  times = {key: [] for key in runs}
  for _ in range(repeats):
    for key, (predictor, rows) in runs.items():
      start = time.perf_counter()
      predictor.predict(rows)
      times[key].append((time.perf_counter() - start) / len(rows))
  out = {name: {} for name in workdirs}
  for (name, batch_size), seconds in times.items():
    out[name][batch_size] = statistics.median(seconds)
  return out
