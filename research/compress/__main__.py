r"""Command line: `python -m research.compress --workdir=DIR --method=METHOD --out=DIR2 [...]`.

Writes DIR2, a workdir like any other (config.json, tokenizer.json, labels.json, checkpoints/)
that `research.predict`, `research.convert` and the evaluation read.
  --method=distill   a training run of a smaller student with DIR (a workdir of ours) as its
                     frozen teacher (research/compress/distill.py); --distill_layers=N, ...
Bad input ends with one line on stderr and exit code 2 (--verbose shows the traceback).
"""
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from research.compress import distill
from research.errors import UserError, exit_with

METHODS = {"distill": distill}
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "The model to compress: a workdir of ours.")
  flags.DEFINE_enum("method", None, list(METHODS), "How to compress it.")
  flags.DEFINE_string("out", None, "Where the compressed model's workdir goes.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  flags.mark_flags_as_required(["workdir", "method", "out"])
  for module in METHODS.values():
    module.define_flags()


def show_progress():
  """Our INFO lines (the run's progress) on stderr; libraries only from WARNING up."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
  ours = logging.getLogger("research")
  ours.handlers[:] = [handler]
  ours.setLevel(logging.INFO)
  ours.propagate = False


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments {argv[1:]}")
  show_progress()
  try:
    print(METHODS[FLAGS.method].compress_from_flags(FLAGS))
  except UserError as e:
    if FLAGS.verbose:
      raise
    exit_with(e)


if __name__ == "__main__":
  define_flags()
  app.run(main)
