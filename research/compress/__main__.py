r"""Compress a trained workdir into a smaller one (see README "Compression").

  python -m research.compress --workdir=DIR --method=prune [--prune_heads=F] [--prune_neurons=F]
      [--prune_sparsity=S] --out=DIR2

Bad input ends with one line on stderr and exit code 2 (--verbose shows the traceback).
"""
from absl import app, flags

from research.compress import prune
from research.errors import UserError, exit_with

METHODS = {"prune": prune}
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "The trained workdir to compress.")
  flags.DEFINE_enum("method", None, list(METHODS), "How to compress.")
  flags.DEFINE_string("out", None, "Where to write the compressed workdir.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  for module in METHODS.values():
    module.define_flags()


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not the result
  try:
    if not FLAGS.workdir or not FLAGS.method:
      raise UserError("pass --workdir=DIR --method=METHOD --out=DIR2")
    print(METHODS[FLAGS.method].compress_from_flags(FLAGS))
  except UserError as e:
    if FLAGS.verbose:
      raise
    exit_with(e)


if __name__ == "__main__":
  define_flags()
  app.run(main)
