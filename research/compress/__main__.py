r"""Compress a workdir into a new one (this branch: --method=quantize only; see quantize.py).

  python -m research.compress --workdir=DIR --method=quantize [--quantize_activations] \
      [--calibration_batches=N] --out=DIR2

Bad input ends with one line on stderr and exit code 2 (--verbose shows the traceback).
"""
from absl import app, flags

from research.compress import quantize
from research.errors import UserError, exit_with

FLAGS = flags.FLAGS
METHODS = {"quantize": quantize}


def define_flags():
  flags.DEFINE_string("workdir", None, "The workdir to compress (its best, else latest, weights).")
  flags.DEFINE_string("method", None, f"One of {sorted(METHODS)}.")
  flags.DEFINE_string("out", None, "Where to write the compressed workdir (new or empty).")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  for module in METHODS.values():
    module.define_flags()


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    if FLAGS.method not in METHODS:
      raise UserError(f"--method must be one of {sorted(METHODS)}, got {FLAGS.method!r}")
    if not FLAGS.workdir:
      raise UserError("--workdir is required")
    print(METHODS[FLAGS.method].compress_from_flags(FLAGS))
  except UserError as e:
    if FLAGS.verbose:
      raise
    exit_with(e)


if __name__ == "__main__":
  define_flags()
  app.run(main)
