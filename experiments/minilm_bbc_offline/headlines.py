r"""The headline check of experiments/minilm_bbc_offline: the fine-tuned MiniLM models on short
texts, through the commands a user types, and their parity with transformers.

  python experiments/minilm_bbc_offline/headlines.py --root=/tmp/minilm_bbc [--rows=full,lora]

Why: every BBC article is long, so the test accuracy on articles cannot show a bug that only short
texts meet. all-MiniLM-L6-v2's tokenizer.json pads and truncates every encoding to 128 ids; when
that padding leaked into our rows, a headline became `[CLS] words [PAD] x ~110 [SEP]`, every pad
attended, and every workdir predicted the majority class on headlines while scoring ~0.98 on
articles. Headlines are the cheapest short texts with labels: the first line of each article.

For each finished workdir of the experiment (ROWS: ROOT/peft/full, ROOT/peft/lora and the
compress rows; --rows picks some):
  headline acc   `python -m research.predict --workdir=W --input=ROOT/headlines/headlines.jsonl
                 --output=ROOT/headlines/predictions/ROW.jsonl` on the headlines of the task's
                 223 test articles (research.data.labelled's bbc_news split), against their topic
  article acc    the workdir's own test accuracy on the full articles: its summary.json, else
                 (quantized, pruned rows) ROOT/compress/results.json
  parity         `python -m research.convert --from=W --to_hf=ROOT/headlines/hf/ROW --overwrite`,
                 then transformers (AutoModelForSequenceClassification, AutoTokenizer with
                 truncation=True, max_length=data.seq_len, padding="max_length", as its users
                 call it) on the same headlines: labels that differ from research.predict's, the
                 max |probability difference| against its `scores`, the max |logit difference|
                 against ours (`research.predict.Predictor`'s forward pass on its own features,
                 batched as the command batches them), and headlines whose input ids differ. A
                 row convert refuses is skipped with convert's reason.
Prints a markdown table and each command; writes ROOT/headlines.json.
"""
import json
import os
import shlex
import subprocess
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compress_table  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = compress_table.REPO
# row -> its workdir under ROOT, in the order of the tables.
ROWS = {"full": "peft/full", "lora": "peft/lora", "teacher": "compress/teacher",
        **{row: f"compress/{row}" for row in (*compress_table.ROWS, *compress_table.FINETUNED)}}

flags.DEFINE_string("root", "/tmp/minilm_bbc", "The --root of run.py: ROOT/peft, ROOT/compress.")
flags.DEFINE_list("rows", list(ROWS), "Which workdirs (default: every finished one).")
FLAGS = flags.FLAGS


def finished(root: str, row: str) -> bool:
  """Whether the row's command ran to its end (what run.py checks before rerunning it)."""
  workdir = os.path.join(root, ROWS[row])
  if row in compress_table.ROWS:  # quantize, prune: labels.json last; distill: summary.json
    argv = compress_table.commands(os.path.join(root, "compress"), [row])[row][1]
    return compress_table.finished(argv, workdir)
  return os.path.exists(os.path.join(workdir, "summary.json"))


def headline_rows(workdir: str) -> list[dict]:
  """{'text': headline, 'label': topic} of the run's test articles: the task's own split."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.data import labelled  # pylint: disable=g-import-not-at-top
  task = checkpoint.workdir_config(workdir)["tasks"]["bbc_news"]
  test = labelled.load_rows(ml_collections.ConfigDict(task))["test"]
  return [{"text": r["text"].partition("\n")[0].strip(), "label": r["label"]} for r in test]


def run_command(argv: list) -> subprocess.CompletedProcess:
  """`argv` (a user's `python -m ...` line) in this interpreter from the repository root."""
  print("$", shlex.join(argv), flush=True)
  return subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)


def predict(workdir: str, input_path: str, output: str) -> list[dict]:
  """research.predict's rows for `input_path`, through its command line."""
  argv = ["python", "-m", "research.predict", f"--workdir={workdir}", f"--input={input_path}",
          f"--output={output}"]
  proc = run_command(argv)
  if proc.returncode:
    raise SystemExit(f"{shlex.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(output, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def export(workdir: str, out: str) -> str | None:
  """Converts `workdir` to a transformers directory `out`; None, or convert's one-line reason."""
  proc = run_command(["python", "-m", "research.convert", f"--from={workdir}", f"--to_hf={out}",
                      "--overwrite"])
  if proc.returncode:
    line = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return line.removeprefix("error: ")
  return None


def article_accuracy(root: str, row: str) -> float | None:
  """The row's test accuracy on full articles, as its run (or the compress table) measured it."""
  summary = os.path.join(root, ROWS[row], "summary.json")
  if os.path.exists(summary):
    with open(summary) as f:
      return json.load(f)["test/bbc_news/accuracy"]
  measured = os.path.join(root, "compress", "results.json")
  if os.path.exists(measured):
    with open(measured) as f:
      return json.load(f)["rows"].get(row, {}).get("test/accuracy")
  return None


def our_logits(workdir: str, texts: list) -> tuple:
  """(logits, input ids, seq_len) of research.predict's path: its features, its batches, its
  jitted forward pass (`Predictor.outputs`, which `Predictor.predict` scores)."""
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  predictor = Predictor(workdir)
  rows = [{"text": t} for t in texts]
  features, _ = predictor.task.predict_features(rows, predictor.tokenizer, predictor.seq_len)
  ids = np.stack([f["input_ids"] for f in features])
  return predictor.outputs(features)["logits"], ids, predictor.seq_len


def hf_logits(hf_dir: str, texts: list, seq_len: int) -> tuple:
  """(logits, input ids, class names) of the exported model as a transformers user runs it."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
  inputs = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length",
                     return_tensors="pt")
  with torch.no_grad():
    logits = model(**inputs).logits.numpy()
  names = [model.config.id2label[i] for i in range(logits.shape[1])]
  return logits, inputs["input_ids"].numpy(), names


def parity(workdir: str, hf_dir: str, texts: list, predictions: list) -> dict:
  """transformers on the export against research.predict's labels and scores and our logits."""
  ours, our_ids, seq_len = our_logits(workdir, texts)
  theirs, their_ids, names = hf_logits(hf_dir, texts, seq_len)
  probs = np.exp(theirs - theirs.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  # research.predict writes `scores` in class index order; the export's labels are its
  # id2label names (LABEL_<i> there would disagree on every headline, as it would for a user).
  scores = np.array([list(p["scores"].values()) for p in predictions])
  labels = [names[i] for i in theirs.argmax(-1)]
  return {"seq_len": seq_len,
          "label_disagreements": sum(a != p["label"] for a, p in zip(labels, predictions)),
          "max_prob_diff": float(np.abs(probs - scores).max()),
          "max_logit_diff": float(np.abs(theirs - ours).max()),
          "input_id_mismatches": int((their_ids != our_ids).any(-1).sum())}


def export_note(workdir: str) -> str:
  """What the export is, beside our model: int8 rows export float kernels (q * scale)."""
  with open(os.path.join(workdir, "config.json")) as f:
    mode = json.load(f)["model"].get("quantization", "none")
  return {"int8_weights": "yes (int8 kernels dequantized)",
          "int8": "yes (dequantized; int8 activations not exported)"}.get(mode, "yes")


def measure_row(root: str, row: str, rows: list, input_path: str) -> dict:
  """One row of the table: headline accuracy, then the parity check if convert exports it."""
  workdir = os.path.join(root, ROWS[row])
  out = os.path.join(root, "headlines")
  predictions = predict(workdir, input_path, os.path.join(out, "predictions", f"{row}.jsonl"))
  result = {"workdir": workdir,
            "headline_accuracy": float(np.mean([p["label"] == r["label"]
                                                for p, r in zip(predictions, rows)])),
            "article_accuracy": article_accuracy(root, row)}
  hf_dir = os.path.join(out, "hf", row)
  reason = export(workdir, hf_dir)
  if reason:
    print(f"{ROWS[row]}: not exported, so no parity check: {reason}", flush=True)
    return {**result, "exported": f"no: {reason}"}
  texts = [r["text"] for r in rows]
  return {**result, "exported": export_note(workdir),
          **parity(workdir, hf_dir, texts, predictions)}


def write_headlines(path: str, rows: list):
  """The input a user would give research.predict: one {"text": headline} a line."""
  for folder in ("predictions", "hf"):
    os.makedirs(os.path.join(os.path.dirname(path), folder), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n")


def measure(root: str, rows: list) -> dict:
  """Measures each of `rows` (finished workdirs under `root`); writes ROOT/headlines.json."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not results
  headlines = headline_rows(os.path.join(root, ROWS[rows[0]]))
  for row in rows[1:]:
    if headline_rows(os.path.join(root, ROWS[row])) != headlines:
      raise SystemExit(f"error: {ROWS[row]} was tested on other articles than {ROWS[rows[0]]}")
  input_path = os.path.join(root, "headlines", "headlines.jsonl")
  write_headlines(input_path, headlines)
  results = {}
  for row in rows:
    results[row] = measure_row(root, row, headlines, input_path)
    print(f"{ROWS[row]}: headline accuracy {results[row]['headline_accuracy']:.4f}", flush=True)
  with open(os.path.join(root, "headlines.json"), "w") as f:
    json.dump({"headlines": len(headlines), "rows": results}, f, indent=2)
  return results


def _figure(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def table(results: dict) -> str:
  lines = ["| workdir | headline acc | article test acc | exported | label disagreements | "
           "max abs prob diff | max abs logit diff |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
  for row, r in results.items():
    lines.append(
        f"| {ROWS[row]} | {r['headline_accuracy']:.4f} | {_figure(r['article_accuracy'], '.4f')}"
        f" | {r['exported']} | {_figure(r.get('label_disagreements'), 'd')} | "
        f"{_figure(r.get('max_prob_diff'), '.2e')} | {_figure(r.get('max_logit_diff'), '.2e')} |")
  return "\n".join(lines)


def chosen_rows(root: str) -> list:
  """--rows that finished under `root`; one named on the command line that did not is an error,
  one of the default list is skipped with a line."""
  unknown = sorted(set(FLAGS.rows) - set(ROWS))
  if unknown:
    raise SystemExit(f"error: unknown --rows {unknown}; known: {list(ROWS)}")
  rows = []
  for row in FLAGS.rows:
    if finished(root, row):
      rows.append(row)
    elif FLAGS["rows"].present:
      raise SystemExit(f"error: {os.path.join(root, ROWS[row])} is not a finished workdir: run "
                       f"experiments/minilm_bbc_offline/run.py --root={root} first")
    else:
      print(f"{ROWS[row]}: no finished workdir, skipped")
  if not rows:
    raise SystemExit(f"error: no finished workdir under --root {root!r} "
                     f"({', '.join(ROWS.values())})")
  return rows


def main(argv):
  del argv
  root = FLAGS.root
  if not os.path.isdir(root):
    raise SystemExit(f"error: --root {root!r} does not exist: run "
                     f"experiments/minilm_bbc_offline/run.py --root={root} first")
  results = measure(root, chosen_rows(root))
  print(f"\nHeadlines of the task's test articles\n\n{table(results)}")


if __name__ == "__main__":
  app.run(main)
