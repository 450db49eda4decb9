r"""BBC News topic classification: pretraining helps? Three models, one split, one budget.

  python experiments/bbc_news_finetune/compare.py --workdir=/tmp/bbc_compare [--mlm=/tmp/mlm]

1. TF-IDF (word 1-2 grams) + logistic regression (scikit-learn), trained on the train split.
2. configs/finetune.py:task=bbc_news,runlocal from scratch.
3. The same, initialised from a runlocal MLM checkpoint (--mlm; trained first if missing).
Prints one table of eval and test accuracy / macro-F1 and writes it to WORKDIR/compare.json.
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (defined when it runs, so other scripts can import its baseline)."""
  flags.DEFINE_string("workdir", "/tmp/bbc_compare", "Where the runs go.")
  flags.DEFINE_string("mlm", "", "A runlocal MLM workdir to start from (default: WORKDIR/mlm).")


def tfidf_baseline(seed=0) -> dict:
  """TF-IDF + logistic regression on the bbc_news task's own train/eval/test split."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from research.evaluate.classification import classification_metrics  # pylint: disable=g-import-not-at-top
  from research.data import labelled  # pylint: disable=g-import-not-at-top
  rows = labelled.load_rows(ml_collections.ConfigDict({"source": "bbc_news", "seed": seed}))
  names = sorted({r["label"] for r in rows["train"]})
  vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
  x_train = vectorizer.fit_transform([r["text"] for r in rows["train"]])
  y = lambda split: [names.index(r["label"]) for r in rows[split]]
  model = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y("train"))
  out = {}
  for split in ("eval", "test"):
    predictions = model.predict(vectorizer.transform([r["text"] for r in rows[split]]))
    m = classification_metrics(y(split), predictions, label_names=names)
    out.update({f"{split}/accuracy": m["accuracy"], f"{split}/f1_macro": m["f1_macro"]})
  return out


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  import finetune  # pylint: disable=g-import-not-at-top
  import mlm  # pylint: disable=g-import-not-at-top
  from research import train  # pylint: disable=g-import-not-at-top
  results = {"tfidf+logreg": tfidf_baseline()}
  mlm_dir = FLAGS.mlm or os.path.join(FLAGS.workdir, "mlm")
  if not os.path.exists(os.path.join(mlm_dir, "summary.json")):
    train.run(mlm.get_config("runlocal"), mlm_dir)
  for name, init in (("scratch", ""), ("mlm-init", mlm_dir)):
    config = finetune.get_config("task=bbc_news,runlocal")
    config.init.weights = init
    summary = train.run(config, os.path.join(FLAGS.workdir, name))
    results[name] = {f"{split}/{m}": summary[f"{split}/bbc_news/{m}"]
                     for split in ("eval", "test") for m in ("accuracy", "f1_macro")}
  print(f"{'model':<14} {'eval acc':>9} {'eval F1':>9} {'test acc':>9} {'test F1':>9}")
  for name, r in results.items():
    print(f"{name:<14} {r['eval/accuracy']:9.4f} {r['eval/f1_macro']:9.4f} "
          f"{r['test/accuracy']:9.4f} {r['test/f1_macro']:9.4f}")
  with open(os.path.join(FLAGS.workdir, "compare.json"), "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
