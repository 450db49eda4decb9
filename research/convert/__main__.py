r"""Convert checkpoints between Hugging Face transformers and this library.

  python -m research.convert --from_hf=DIR --to=OUT
      A transformers checkpoint directory (config.json + model.safetensors) -> OUT, a directory
      that `--config.init.weights=OUT` (weights only) reads, with OUT/config.json (the model
      section) and OUT/tokenizer.json when DIR holds a tokenizer.
  python -m research.convert --from=WORKDIR --to_hf=OUT [--overwrite]
      One of our runs -> OUT/config.json + OUT/model.safetensors (and tokenizer.json), which
      transformers' AutoModel* classes load: its best parameters (WORKDIR/best, which
      evals.best_metric keeps) if it has them, else its latest checkpoint; the printed line says
      which. A classifier's id2label holds the class names of WORKDIR/labels.json. A LoRA run's
      adapters are merged into the kernels: the model as trained, as a plain transformers model.
  python -m research.convert --from=WORKDIR --to_hf_peft=OUT [--overwrite]
      A PEFT run's adapters (LoRA) and task heads (the same parameters as --to_hf) ->
      OUT/adapter_config.json + OUT/adapter_model.safetensors, which
      `peft.PeftModel.from_pretrained(<base>, OUT)` loads onto the transformers base model
      (`research.convert.hf_peft`); the printed line is that call, with a base on this machine.

OUT must be new or empty (--to_hf and --to_hf_peft: or --overwrite, which replaces the files an
export writes there) and not the directory converted from. Bad input ends with one line on
stderr and exit code 2, before anything is written (--verbose shows the traceback).
"""
from absl import app, flags

from research import command_line, compile_cache
from research.convert.workdir import check_target, export_hf, import_hf
from research.errors import UserError, one_line_errors

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs: importing this module defines none, so it
  coexists with the other commands' flags (predict, main) in one process."""
  flags.DEFINE_string("from_hf", None, "A transformers checkpoint directory to import.")
  flags.DEFINE_string("to", None, "Where to write the imported checkpoint.")
  flags.DEFINE_string("from", None, "A workdir of ours to export: its best parameters "
                      "(WORKDIR/best) if it kept them, else its latest checkpoint.")
  flags.DEFINE_string("to_hf", None, "Where to write the transformers checkpoint.")
  flags.DEFINE_string("to_hf_peft", None, "Where to write a PEFT run's adapter in the Hugging "
                      "Face PEFT format.")
  flags.DEFINE_bool("overwrite", False, "Let --to_hf or --to_hf_peft be a directory that is not "
                    "empty (an earlier export): the files the export writes replace theirs.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  compile_cache.define_flag()


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not the result
  compile_cache.use(FLAGS.compile_cache_dir)
  with one_line_errors(FLAGS.verbose):
    source = FLAGS["from"].value
    if FLAGS.from_hf and FLAGS.to and not (source or FLAGS.to_hf):
      check_target(FLAGS.to, "--to", FLAGS.from_hf)
      print(import_hf(FLAGS.from_hf, FLAGS.to))
    elif source and FLAGS.to_hf and not (FLAGS.from_hf or FLAGS.to or FLAGS.to_hf_peft):
      check_target(FLAGS.to_hf, "--to_hf", source, FLAGS.overwrite)
      print(export_hf(source, FLAGS.to_hf))
    elif source and FLAGS.to_hf_peft and not (FLAGS.from_hf or FLAGS.to):
      check_target(FLAGS.to_hf_peft, "--to_hf_peft", source, FLAGS.overwrite)
      from research.convert import hf_peft  # pylint: disable=g-import-not-at-top
      print(hf_peft.export(source, FLAGS.to_hf_peft))
    else:
      raise UserError("pass one of --from_hf=DIR --to=OUT, --from=WORKDIR --to_hf=OUT or "
                      "--from=WORKDIR --to_hf_peft=OUT")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=command_line.parse_flags)  # a bad flag: one line, exit code 2
