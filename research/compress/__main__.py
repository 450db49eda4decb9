r"""Compress a workdir of ours into a new one (see README "Compression").

  python -m research.compress --workdir=DIR --method=quantize [--quantize_activations] \
      [--calibration_batches=N] [--calibration_percentile=P] --out=DIR2
  python -m research.compress --workdir=DIR --method=prune [--prune_heads=F] [--prune_neurons=F] \
      [--prune_sparsity=S] [--prune_scope=global|per_layer] --out=DIR2
  python -m research.compress --workdir=TEACHER --method=distill --distill_layers=N [...] --out=DIR2

DIR2 is a workdir like any other (config.json, tokenizer.json, labels.json, checkpoints/) that
`research.predict`, `research.convert` and the evaluation read. Bad input ends with one line on
stderr and exit code 2 (--verbose shows the traceback).
"""
from absl import app, flags

from research import command_line, compile_cache, files
from research.compress import distill_command, prune, quantize
from research.errors import UserError, exit_with, one_line_errors

METHODS = {"distill": distill_command, "prune": prune, "quantize": quantize}
FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (each method's own, prefixed by its name), defined only when it runs."""
  flags.DEFINE_string("workdir", None, "The workdir to compress (its best, else latest, weights).")
  flags.DEFINE_enum("method", None, list(METHODS), "How to compress it.")
  flags.DEFINE_string("out", None, "Where to write the compressed workdir (new or empty).")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  compile_cache.define_flag()
  for module in METHODS.values():
    module.define_flags()


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments {argv[1:]}")
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not the result
  compile_cache.use(FLAGS.compile_cache_dir)
  with one_line_errors(FLAGS.verbose):
    if not (FLAGS.workdir and FLAGS.method and FLAGS.out):
      raise UserError("pass --workdir=DIR --method=METHOD --out=DIR2 "
                      f"(METHOD one of {sorted(METHODS)})")
    files.check_output_dir(FLAGS.out, "--out")
    print(METHODS[FLAGS.method].compress_from_flags(FLAGS))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=command_line.parse_flags)  # a bad flag: one line, exit code 2
