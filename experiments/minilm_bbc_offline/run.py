r"""experiments/minilm_bbc_offline: every BBC News row from the real all-MiniLM-L6-v2 weights,
on 2 CPU cores with no network; runs them and prints the measured tables.

  python experiments/minilm_bbc_offline/run.py --part=all --root=/tmp/minilm_bbc

Flags:
  --part          peft: full fine-tuning, each PEFT method and TF-IDF + logistic regression
                  (peft_table.py, ROOT/peft/); compress: the 150-step teacher and its compressed
                  rows (compress_table.py, ROOT/compress/); all: both (default)
  --root          where the runs go; a run that finished there is read, not rerun
  --methods       peft part: which methods ('full' = full fine-tuning; default all)
  --timing_steps  peft part: steps of the short second run each method's step time comes from
  --rows          compress part: which rows (the teacher is always measured; default all)
  --repeats       compress part: interleaved latency rounds (the median is reported)
  --extra         more --config.key=value flags for every training run (e.g. for a test)

Every run is one command a user types (`python -m research.main
--config=experiments/minilm_bbc_offline/configs/minilm_bbc.py[:ARGS] --workdir=...` or `python -m
research.compress ...`); the output ends with each table and each command. Each part writes
ROOT/<part>/results.json.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compress_table  # pylint: disable=g-import-not-at-top,wrong-import-position
import peft_table  # pylint: disable=g-import-not-at-top,wrong-import-position

PARTS = ("peft", "compress", "all")
COMPRESS_ROWS = (*compress_table.ROWS, *compress_table.FINETUNED)

flags.DEFINE_enum("part", "all", PARTS, "Which part of the table to run and measure.")
flags.DEFINE_string("root", "/tmp/minilm_bbc", "Where the runs go (ROOT/peft, ROOT/compress).")
flags.DEFINE_list("methods", list(peft_table.METHODS),
                  "peft part: methods to run ('full' = full fine-tuning).")
flags.DEFINE_integer("timing_steps", 25, "peft part: steps of the timing run of each method.")
flags.DEFINE_list("rows", list(COMPRESS_ROWS),
                  "compress part: which rows (the teacher is always measured).")
flags.DEFINE_integer("repeats", 15, "compress part: interleaved latency rounds (the median).")
flags.DEFINE_list("extra", [], "More --config.key=value flags for every training run (the "
                  "compress rows follow the teacher's config), e.g. for a test.")
FLAGS = flags.FLAGS


def check_flags():
  """Bad names end the script in one line, before anything runs."""
  for name, given, known in (("methods", FLAGS.methods, peft_table.METHODS),
                             ("rows", FLAGS.rows, COMPRESS_ROWS)):
    unknown = sorted(set(given) - set(known))
    if unknown:
      raise SystemExit(f"error: unknown --{name} {unknown}; known: {list(known)}")


def main(argv):
  del argv
  check_flags()
  tables = []
  if FLAGS.part in ("peft", "all"):
    results = peft_table.measure(os.path.join(FLAGS.root, "peft"), FLAGS.methods, FLAGS.extra,
                                 FLAGS.timing_steps)
    tables.append(("Full fine-tuning, PEFT, TF-IDF (300 steps)", peft_table.table(results)))
  if FLAGS.part in ("compress", "all"):
    results = compress_table.measure(os.path.join(FLAGS.root, "compress"), FLAGS.rows,
                                     FLAGS.repeats, FLAGS.extra)
    tables.append(("Compression of the 150-step teacher", compress_table.table(results)))
  for title, text in tables:
    print(f"\n{title}\n\n{text}")


if __name__ == "__main__":
  app.run(main)
